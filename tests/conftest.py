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
