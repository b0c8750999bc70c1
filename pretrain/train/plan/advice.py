"""What fits: the largest micro-batch, and what to change when the config does not fit — in the
order of what it costs: a smaller micro-batch (more accumulation steps, same result), then
activation checkpointing (selective, then full: recomputation), a higher ZeRO stage (more
communication), optimizer offload (the step on the CPU), more GPUs. Each step keeps the ones
before it; the first combination that fits is the answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pretrain.train.config import RunConfig

MAX_MICRO_BATCH = 1 << 16
MAX_GPUS = 1 << 16


def with_train(cfg: RunConfig, **update: Any) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def with_deepspeed(cfg: RunConfig, **update: Any) -> RunConfig:
    return cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update=update)})


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in 1..upper with fits(n) (monotone: fits(n) implies fits(n - 1)); 0 if
    none."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= upper and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, upper + 1)
    while hi - lo > 1:  # fits(lo), not fits(hi) (or hi past the upper bound)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@dataclass(frozen=True)
class Step:
    """One change on the way to fitting, with the overrides that make it."""

    what: str
    overrides: tuple[str, ...]
    total_bytes: int
    fits: bool


def _checkpointing_steps(cfg: RunConfig) -> list[tuple[str, tuple[str, ...], RunConfig]]:
    ac = cfg.train.activation_checkpointing
    order = ["none", "selective", "full"]
    current = order.index(ac.mode) if ac.mode in order else 1  # every_n sits in between
    out = []
    for mode in order[current + 1:]:
        new = ac.model_copy(update={"mode": mode, "every_n": None, "selective_mm": "all"})
        cost = "no extra matmuls" if mode == "selective" else "about +1/3 compute"
        out.append((f"activation checkpointing {mode} ({cost})",
                    (f"train.activation_checkpointing={mode}",), with_train(
                        cfg, activation_checkpointing=new)))
    return out


def candidate_steps(cfg: RunConfig) -> list[tuple[str, tuple[str, ...], RunConfig]]:
    """Checkpointing, then ZeRO stages, then offload — each on top of the ones before."""
    steps = _checkpointing_steps(cfg)
    current = steps[-1][2] if steps else cfg
    for stage in range(cfg.deepspeed.zero_stage + 1, 4):
        current = with_deepspeed(current, zero_stage=stage)
        cost = {1: "optimizer states sharded", 2: "gradients sharded too",
                3: "parameters sharded too: more communication"}[stage]
        steps.append((f"ZeRO stage {stage} ({cost})", (f"deepspeed.zero_stage={stage}",),
                      current))
    if not current.deepspeed.offload_optimizer:
        current = with_deepspeed(current, offload_optimizer=True)
        steps.append(("optimizer offload to CPU memory (the optimizer step runs on the CPU)",
                      ("deepspeed.offload_optimizer=true",), current))
    return steps
