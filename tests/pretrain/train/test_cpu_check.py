"""The start-up warning for a configuration that will not make a step in reasonable time on CPU:
the README's GPU config (gpt2-124m) is flagged with its estimate, the reasons it is worse on CPU
and the CPU config to use; the shipped CPU config, the demo and the test configs are not. (That a
real run logs it: tests/launch/test_status_local.py.)"""

from __future__ import annotations

import pytest
from helpers.dist import REPO

from pretrain.model import flops_per_token
from pretrain.train.config import load_run_config
from pretrain.train.cpu_check import CPU_CONFIG, cpu_step_warning


def warning_for(name: str, world_size: int = 1, *overrides: str) -> str | None:
    cfg = load_run_config(REPO / "configs" / name, ["model.vocab_size=32000", *overrides],
                          world_size=world_size)
    return cpu_step_warning(cfg, world_size, flops_per_token(cfg.model, cfg.data.seq_len))


def test_the_gpu_config_on_cpu_is_flagged_with_its_estimate_and_the_cpu_config():
    text = warning_for("gpt2-124m.yaml")
    assert text is not None and (REPO / CPU_CONFIG).is_file()
    assert "about 3.8e+14 FLOPs per step per rank (491,520 tokens × " in text
    assert "40 micro-batches per step" in text and "precision bf16_autocast" in text
    assert "train.compile" in text and f"start from {CPU_CONFIG}" in text
    assert " h " in text and "0.0 min" not in text  # hours per step, in human units


@pytest.mark.parametrize("name", ["own-corpus-cpu.yaml", "demo.yaml", "gpt-tiny.yaml"])
def test_cpu_sized_configs_pass(name):
    assert warning_for(name) is None
    assert warning_for(name, 2) is None


def test_the_cpu_config_is_cpu_sized():
    cfg = load_run_config(REPO / CPU_CONFIG, world_size=2)
    t = cfg.train
    assert cfg.precision == "fp32" and not t.compile and 100 <= t.max_steps <= 1000
    assert t.global_batch_size == t.micro_batch_size * 2  # one micro-batch per rank on 2 ranks
    assert cfg.checkpoint.every_steps <= t.max_steps / 2
