"""Learning-rate schedules as multipliers of the peak lr, one function of the step.

`step` counts optimizer steps from 0 (the multiplier used for the first update is f(0)).
Importing it costs no torch (the pre-flight computes the lr a resume jumps to, `lr_jump`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pretrain.train.config import RunConfig, ScheduleConfig

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps


def lr_multiplier(cfg: ScheduleConfig, step: int, max_steps: int) -> float:
    """Peak-lr multiplier at optimizer step `step` (0-based) of `max_steps`."""
    warm = cfg.warmup_steps
    if cfg.name == "inverse_sqrt":
        # "Attention is all you need": rises linearly for `warm` steps, then ∝ 1/sqrt(step);
        # 1.0 at the end of warmup, so optim.lr is the peak.
        s = step + 1
        return min(s / warm, math.sqrt(warm / s))
    if step < warm:
        return _warmup(step, warm)
    if cfg.name == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.name == "wsd":  # warmup - stable - (linear) decay over the last decay_fraction
        decay_steps = max(1, round(cfg.decay_fraction * max_steps))
        decay_start = max(warm, max_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, (step - warm + 1) / max(1, max_steps - warm))
    if cfg.name == "linear":
        return 1.0 - (1.0 - floor) * progress
    # cosine
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Multiplier:
    """Picklable lambda for LambdaLR (its state_dict keeps a callable object's fields)."""

    def __init__(self, cfg: ScheduleConfig, max_steps: int):
        self.cfg_json = cfg.model_dump_json()
        self.max_steps = max_steps

    def __call__(self, step: int) -> float:
        cfg = ScheduleConfig.model_validate_json(self.cfg_json)
        return lr_multiplier(cfg, step, self.max_steps)


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, max_steps: int) -> LambdaLR:
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, _Multiplier(cfg, max_steps))


def lr_at(cfg: RunConfig | dict[str, Any], step: int) -> float:
    """The lr of optimizer step `step` (0-based) under a run config (typed, or a checkpoint's
    resolved config as saved)."""
    if isinstance(cfg, dict):
        schedule = ScheduleConfig.model_validate(cfg["schedule"])
        lr, max_steps = float(cfg["optim"]["lr"]), int(cfg["train"]["max_steps"])
    else:
        schedule, lr, max_steps = cfg.schedule, cfg.optim.lr, cfg.train.max_steps
    return lr * lr_multiplier(schedule, step, max_steps)


def lr_jump(old: dict[str, Any], cfg: RunConfig, step: int) -> str | None:
    """A resume at `step` (the steps done) whose lr schedule changed (a shorter
    train.max_steps, another schedule or peak lr): "the learning rate of step N+1 jumps from A
    to B (why)", or None when it does not move (or the old config cannot be read)."""
    try:
        before, old_steps = lr_at(old, step), int(old["train"]["max_steps"])
    except (KeyError, TypeError, ValueError):
        return None
    after = lr_at(cfg, step)
    if math.isclose(before, after, rel_tol=1e-9):
        return None
    why = (f"the schedule now ends at train.max_steps {cfg.train.max_steps}, not {old_steps}"
           if old_steps != cfg.train.max_steps else "the lr settings changed")
    return f"the learning rate of step {step + 1} jumps from {before:.4g} to {after:.4g} ({why})"


def retarget(scheduler: LambdaLR, cfg: ScheduleConfig, max_steps: int, peak_lr: float) -> None:
    """Point a restored scheduler at this config (LambdaLR.load_state_dict brings back the saved
    base lr and the saved multiplier's fields) and set the lr of the next step from it, the same
    expression LambdaLR.step uses, so an unchanged config gives back the same bits. Each group's
    peak is peak_lr × its `lr_scale` (muP's hidden matrices: 1/m; pretrain/model/mup.py)."""
    fresh, optimizer = _Multiplier(cfg, max_steps), scheduler.optimizer
    peaks = [group_peak(peak_lr, g) for g in optimizer.param_groups]
    scheduler.base_lrs = peaks
    for fn in scheduler.lr_lambdas:
        fn.__dict__.update(fresh.__dict__)
    lrs = [base * fn(scheduler.last_epoch)
           for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for g, lr, peak in zip(optimizer.param_groups, lrs, peaks):
        g["lr"], g["initial_lr"] = lr, peak
    scheduler._last_lr = lrs


def group_peak(peak_lr: float, group: dict) -> float:
    """A param group's peak lr: optim.lr × the group's lr_scale (1 when it has none), computed
    as build_optimizer does, so a resume gives back the same bits."""
    return peak_lr * group.get("lr_scale", 1.0)
