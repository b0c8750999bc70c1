"""Suite-wide options: `--slow` runs the long trials marked `@pytest.mark.slow`."""

import os

import pytest

# Every test process (and the ranks it starts) sees the same deterministic, offline settings.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the long trials marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long trial: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """torch's flex_attention front end refuses a backward on CPU (a device check: the fused
    kernels are GPU-only). Its reference implementation, which the front end runs on CPU, does
    have a backward: lift only that check, so flex gradients can be compared on CPU."""
    import torch.nn.attention.flex_attention as flex

    check = flex._validate_device
    monkeypatch.setattr(flex, "_validate_device",
                        lambda q, k, v: check(q.detach(), k.detach(), v.detach()))
