"""The plan checked by the run itself: `memory_planned_bytes` (pretrain.train.plan, logged at
start) next to `memory_peak_bytes` measured over the first steps, and a warning when they
differ by more than 20%.

The measured peak: on a GPU `torch.cuda.max_memory_allocated()` (free to read: the allocator
keeps it anyway); on CPU, where torch keeps no such figure, the tensor peak of
pretrain.memory.TensorMemory, active from the model's construction through the first
`CPU_STEPS` optimizer steps only — it sees every op, which costs Python time per op
(README figure), so it is switched off after them. It cannot run under torch.compile (compiled
code runs eagerly inside a dispatch mode), so on CPU a compiled run logs no peak. Ranks agree
on the highest peak (one all-reduce, once).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

CPU_STEPS = 3       # the first step creates the optimizer states: measure past it
TOLERANCE = 0.20    # warn when measured and planned differ by more than this


class PeakMemory:
    """Start before the model is built; `step_done(step)` after each optimizer step;
    `peak_bytes()` once `ready`."""

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
        return self.cuda and self.steps >= 1 or self._cpu_peak is not None

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
