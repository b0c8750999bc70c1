"""Will this run make a step in reasonable time on a CPU? One rough estimate at start-up.

A GPU-sized config started on a CPU (gpt2-124m: 480 × 1024 tokens per step, bf16, compile) sits
for many minutes without a single step, and a stop request (Ctrl-C) waits for the step to end.
`cpu_step_warning` multiplies the training FLOPs per token by the tokens one rank processes per
step and divides by a rough CPU rate; above `SLOW_STEP_S` seconds per step it returns a warning
with the estimate, what makes it worse on CPU and the config to start from instead. The rate
(`ARROWTRAIN_CPU_FLOPS`, FLOP/s per CPU rank) is deliberately optimistic: it is meant to catch
the obvious, never to nag a run that is merely slow. Torch-free."""

from __future__ import annotations

import os

from pretrain.logs import human_duration
from pretrain.objectives import objective_for
from pretrain.train.config import RunConfig

CPU_CONFIG = "configs/own-corpus-cpu.yaml"
# Rough, optimistic: `make demo` trains ~4,100 tokens/s x ~12 MFLOP/token = ~5e10 FLOP/s on 2
# ranks of a 2-core AMD EPYC (docs/launching.md, make demo); one rank on a fast laptop core set does more.
CPU_FLOPS_PER_RANK = 1e11
SLOW_STEP_S = 60.0


def cpu_flop_rate() -> float:
    try:
        return float(os.environ.get("ARROWTRAIN_CPU_FLOPS", CPU_FLOPS_PER_RANK))
    except ValueError:
        return CPU_FLOPS_PER_RANK


def cpu_step_warning(cfg: RunConfig, world_size: int, flops_per_token: int,
                     flop_rate: float | None = None) -> str | None:
    """A warning when one step will obviously take longer than SLOW_STEP_S on CPU, else None."""
    t = cfg.train
    seq = objective_for(cfg.data).tokens_per_sample
    tokens = t.global_batch_size * seq / world_size  # per rank per step
    flops = flops_per_token * tokens
    rate = flop_rate or cpu_flop_rate()
    seconds = flops / rate
    if seconds < SLOW_STEP_S:
        return None
    worse = []
    micro = t.global_batch_size // (t.micro_batch_size * world_size)
    if micro > 1:
        worse.append(f"{micro} micro-batches per step (a stop request waits for the step to "
                     "end)")
    if cfg.precision != "fp32":
        worse.append(f"precision {cfg.precision} (on CPU fp32 is faster)")
    if t.compile:
        worse.append("train.compile (minutes of compiling before the first step)")
    return (f"this configuration will hardly make progress on CPU: about {flops:.2g} FLOPs per "
            f"step per rank ({tokens:,.0f} tokens × {flops_per_token:,} FLOPs/token); at a "
            f"rough {rate:.0e} FLOP/s per CPU rank that is about {human_duration(seconds)} per "
            "step" + (f"; also {', '.join(worse)}" if worse else "") +
            f". For a CPU run start from {CPU_CONFIG} (a small GPT, fp32, no compile, "
            "steps of a second or less), or run this one on GPUs.")
