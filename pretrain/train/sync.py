"""What a training step leaves on the device, read on the host only at sync steps.

A step's loss, its grad norm and a non-finite watch stay on the rank's device: reading them
every step (`.item()`, `float(tensor)`) makes the host wait for the GPU, so the next step's
kernels are launched only after the GPU has gone idle. At a sync step, one all-gather of a
small vector per rank brings everything to every host at once: the step's mean loss, the
grad norm, whether any rank wants to stop, whether any rank knows that the background
checkpoint failed, the first non-finite step of every rank and the ranks' host seconds per
step (from which every rank computes the same next sync interval).

The watch never misses a step: `record` marks the first step whose loss or grad norm is not
finite with device ops only (no sync), so a NaN at step 3 found at the sync of step 10 is
still reported as step 3 — and the trainer syncs before every checkpoint, so no checkpoint is
ever written after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Layout of the vector each rank contributes at a sync.
(LOSS, GNORM, BAD_LOSS_STEP, BAD_LOSS, BAD_GNORM_STEP, BAD_GNORM, HOST_BAD_GNORM_STEP,
 HOST_BAD_GNORM, STOP, SECONDS, CKPT_FAILED) = range(11)


@dataclass(frozen=True)
class Synced:
    """The values all ranks agree on at a sync step."""

    loss: float                   # mean over ranks and micro-batches of the last step's loss
    grad_norm: float | None       # None when the engine reports none (ZeRO-0 fp32)
    stop: bool                    # some rank has received SIGUSR1/SIGTERM
    problem: str | None           # "non-finite loss (nan) at step 3", or None
    seconds_per_step: float       # slowest rank's host seconds per step since the last sync
    checkpoint_failed: bool = False  # some rank knows the background save in flight failed


def next_interval(seconds_per_step: float, every_steps: int, every_seconds: float) -> int:
    """Steps until the next sync: `every_steps`, fewer when steps are slow, so that a stop
    request waits at most about `every_seconds` (or one step, if a step takes longer)."""
    if seconds_per_step <= 0:
        return every_steps
    return max(1, min(every_steps, int(every_seconds / seconds_per_step)))


class DeviceStats:
    """Per-rank step values kept on `device` between syncs."""

    def __init__(self, device: torch.device, world_size: int):
        self.device, self.world = device, world_size
        self.f64 = {"dtype": torch.float64, "device": device}
        self.loss = torch.zeros((), **self.f64)
        self.grad_norm: torch.Tensor | float | None = None
        # (step, value) of the first non-finite loss / grad norm on the device; step 0: none.
        self.bad = torch.zeros(4, **self.f64)
        # The same for grad norms DeepSpeed hands back as Python floats (already on the host).
        self.host_bad = [0.0, 0.0]

    def record(self, step: int, loss: torch.Tensor, grad_norm) -> None:
        """Remember step `step`'s loss (a device scalar) and grad norm (device scalar, Python
        float or None) and update the non-finite watch — device ops only, no host sync."""
        self.loss = loss.detach().double()
        self._watch(0, step, self.loss)
        if torch.is_tensor(grad_norm):
            self.grad_norm = grad_norm.detach().double().reshape(())
            self._watch(2, step, self.grad_norm)
        else:
            self.grad_norm = None if grad_norm is None else float(grad_norm)
            if self.grad_norm is not None and not math.isfinite(self.grad_norm) \
                    and not self.host_bad[0]:
                self.host_bad = [float(step), self.grad_norm]

    def _watch(self, slot: int, step: int, value: torch.Tensor) -> None:
        newly = torch.logical_and(~torch.isfinite(value), self.bad[slot] == 0)
        self.bad[slot] = torch.where(newly, float(step), self.bad[slot])
        self.bad[slot + 1] = torch.where(newly, value, self.bad[slot + 1])

    def _local_vector(self, stop: bool, seconds_per_step: float,
                      checkpoint_failed: bool = False) -> torch.Tensor:
        gnorm = self.grad_norm
        if not torch.is_tensor(gnorm):
            gnorm = torch.tensor(float("nan") if gnorm is None else gnorm, **self.f64)
        host = torch.tensor([*self.host_bad, float(stop), seconds_per_step,
                             float(checkpoint_failed)], **self.f64)
        return torch.cat([self.loss.reshape(1), gnorm.reshape(1), self.bad, host])

    def sync(self, stop: bool, seconds_per_step: float,
             checkpoint_failed: bool = False) -> Synced:
        """One all-gather and one copy to the host; every rank returns the same values."""
        local = self._local_vector(stop, seconds_per_step, checkpoint_failed)
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        rows = torch.stack(gathered).cpu().tolist()
        return Synced(
            loss=sum(r[LOSS] for r in rows) / self.world,
            grad_norm=None if self.grad_norm is None else rows[0][GNORM],
            stop=any(r[STOP] > 0 for r in rows), problem=first_problem(rows),
            seconds_per_step=max(r[SECONDS] for r in rows),
            checkpoint_failed=any(r[CKPT_FAILED] > 0 for r in rows))


def first_problem(rows: list[list[float]]) -> str | None:
    """The earliest non-finite loss (or grad norm) on any rank, as a message."""
    found = []
    for r in rows:
        for step_i, value_i, what in ((BAD_LOSS_STEP, BAD_LOSS, "loss"),
                                      (BAD_GNORM_STEP, BAD_GNORM, "gradient norm"),
                                      (HOST_BAD_GNORM_STEP, HOST_BAD_GNORM, "gradient norm")):
            if r[step_i] > 0:
                found.append((int(r[step_i]), what != "loss", what, r[value_i]))
    if not found:
        return None
    step, _, what, value = min(found)
    return f"non-finite {what} ({value}) at step {step}"
