"""The plan checked by the run itself: `memory_planned_bytes` (pretrain.train.plan, logged at
start) next to `memory_peak_bytes` measured over the first steps, and a warning when they
differ by more than 20%.

The measured peak: on a GPU `torch.cuda.max_memory_allocated()` (free to read: the allocator
keeps it anyway); on CPU, where torch keeps no such figure, the tensor peak of
pretrain.memory.TensorMemory, active from the model's construction through the first
`CPU_STEPS` optimizer steps only — it sees every op, which costs Python time per op (measured
on a 2-core AMD EPYC, one thread: a gpt-tiny step 13.5 -> 51 ms, ×3.8; the demo model's
829 -> 921 ms, ×1.11), so it is switched off after them. It cannot run under torch.compile (compiled
code runs eagerly inside a dispatch mode), so on CPU a compiled run logs no peak. Ranks agree
on the highest peak (one all-reduce, once).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# The first step creates the optimizer states; the second is the first whole step with them, and
# its peak is the run's: steps 2 and 3 gave the same bytes in every configuration tried (ZeRO
# 0-3, 1 and 2 ranks, bf16, bf16 autocast, full and selective checkpointing, 4 micro-batches of
# accumulation, T5 span corruption), so a third step under the mode only cost time.
CPU_STEPS = 2
TOLERANCE = 0.20    # warn when measured and planned differ by more than this


class PeakMemory:
    """Start before the model is built; `step_done()` after each optimizer step;
    `local_peak()` once `ready` (after `cpu_steps` steps, on a GPU too)."""

    def __init__(self, device: torch.device, enabled: bool = True,
                 cpu_steps: int = CPU_STEPS):
        self.cuda = device.type == "cuda"
        self.cpu_steps = cpu_steps
        self.mode: Any = None
        self.steps = 0
        self.enabled = enabled
        self._cpu_peak: int | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        from pretrain.memory import TensorMemory

        self.mode = TensorMemory()
        self.mode.__enter__()

    def step_done(self) -> None:
        self.steps += 1
        if self.mode is not None and self.steps >= self.cpu_steps:
            self._cpu_peak = self.mode.peak_bytes
            self.stop()

    def stop(self) -> None:
        """Leave the dispatch mode (CPU); safe to call twice."""
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)

    @property
    def ready(self) -> bool:
        if not self.enabled:
            return False
        return self.cuda and self.steps >= self.cpu_steps or self._cpu_peak is not None

    def local_peak(self) -> int | None:
        if not self.ready:
            return None
        return int(torch.cuda.max_memory_allocated()) if self.cuda else self._cpu_peak


def max_over_ranks(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def compare(measured: int, planned: int) -> str | None:
    """A warning when the measured peak is more than TOLERANCE away from the plan."""
    if planned <= 0:
        return None
    ratio = measured / planned
    if abs(ratio - 1) <= TOLERANCE:
        return None
    return (f"memory: measured peak {measured / 2**30:.3f} GiB per rank is {ratio:.2f}× the "
            f"plan's {planned / 2**30:.3f} GiB (more than {TOLERANCE:.0%} off): "
            "`arrowtrain plan` mis-sizes this configuration — its predictions of what fits "
            "are off by as much")


def _planned(cfg, world_size: int, device_type: str):
    """The plan's itemised peak for this run, or None when it cannot be made."""
    from pretrain.train.plan import memory_peak

    try:
        return memory_peak(cfg, world_size, device=device_type)
    except Exception as e:  # the plan must never stop a run
        log.warning("memory plan unavailable: %s", e)
        return None


class Calibration:
    """The trainer's side: the plan's figure logged at start, the measured peak (the highest
    over ranks) after the first steps, both in every metrics row from then on, and a warning
    when they differ by more than TOLERANCE. Create it just before the model is built."""

    def __init__(self, cfg, world_size: int, rank: int, device: torch.device,
                 measure: bool = True):
        self.device, self.rank0 = device, rank == 0
        plan = _planned(cfg, world_size, device.type)
        self.planned = plan.allocated if plan is not None else None
        cpu_compiled = device.type == "cpu" and cfg.train.compile
        enabled = measure and not cpu_compiled and self.planned is not None
        self.tracker = PeakMemory(device, enabled=enabled)
        self.measured: int | None = None
        if self.rank0 and plan is not None:
            parts = ", ".join(f"{k} {v / 2**30:.3f}" for k, v in plan.as_dict().items())
            log.info("memory plan: %.3f GiB per rank at the step's peak (%s GiB)%s",
                     plan.allocated / 2**30, parts,
                     "; no measured peak on CPU with train.compile" if cpu_compiled else "")
        self.tracker.start()

    def training_starts(self) -> None:
        """Count the step's peak from here (not a checkpoint load's); states stay counted.
        Only before the first step (run() may be called again: benchmarks)."""
        if self.tracker.steps > 0 or self.measured is not None:
            return
        if self.tracker.mode is not None:
            self.tracker.mode.peak_bytes = self.tracker.mode.live_bytes
        elif self.tracker.cuda and self.tracker.enabled:
            torch.cuda.reset_peak_memory_stats()

    def step_done(self) -> None:
        """After each optimizer step, on every rank (the comparison is one collective)."""
        if self.measured is not None or not self.tracker.enabled:
            return
        self.tracker.step_done()
        if not self.tracker.ready:
            return
        self.measured = max_over_ranks(self.tracker.local_peak(), self.device)
        if self.rank0:
            warning = compare(self.measured, self.planned)
            if warning:
                log.warning("%s", warning)
            else:
                log.info("memory: measured peak %.3f GiB per rank, plan %.3f GiB (within "
                         "%.0f%%)", self.measured / 2**30, self.planned / 2**30,
                         TOLERANCE * 100)

    def fields(self) -> dict[str, int]:
        out = {}
        if self.planned is not None:
            out["memory_planned_bytes"] = self.planned
        if self.measured is not None:
            out["memory_peak_bytes"] = self.measured
        return out

    def stop(self) -> None:
        self.tracker.stop()
