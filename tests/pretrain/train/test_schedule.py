"""Learning-rate schedules: warmup, cosine/linear/wsd decay to the floor, the 2017 paper's
inverse square root."""

import math

import pytest
import torch

from pretrain.train.config import ScheduleConfig
from pretrain.train.schedule import build_scheduler, lr_multiplier


def curve(name: str, steps: int = 100, **kw) -> list[float]:
    cfg = ScheduleConfig(name=name, **kw)
    return [lr_multiplier(cfg, s, steps) for s in range(steps)]


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd"])
def test_warmup_then_decay_to_floor(name):
    lr = curve(name, warmup_steps=10, min_lr_ratio=0.1)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(lr[:10], lr[1:10]))  # rising
    assert all(a >= b - 1e-12 for a, b in zip(lr[10:], lr[11:]))   # then never rising
    assert lr[-1] == pytest.approx(0.1)


def test_cosine_midpoint_and_wsd_plateau():
    cos = curve("cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert cos[49] == pytest.approx(0.5, abs=1e-12)  # half-way through the decay
    wsd = curve("wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0)
    assert wsd[10:80] == [1.0] * 70 and wsd[80] < 1.0 and wsd[-1] == 0.0


def test_inverse_sqrt_is_the_papers_rule():
    # lr = d^-0.5 · min(s^-0.5, s · w^-1.5) = peak · min(s/w, sqrt(w/s)), peak at s = w.
    cfg = ScheduleConfig(name="inverse_sqrt", warmup_steps=4000)
    d = 512
    for s in (1, 100, 4000, 10000, 100000):
        paper = d**-0.5 * min(s**-0.5, s * 4000**-1.5)
        assert 7.0e-4 / (d**-0.5 * 4000**-0.5) * paper == pytest.approx(
            7.0e-4 * lr_multiplier(cfg, s - 1, 100000), rel=1e-12)
    assert lr_multiplier(cfg, 3999, 100000) == 1.0
    assert lr_multiplier(cfg, 15999, 100000) == pytest.approx(math.sqrt(4000 / 16000))


def test_scheduler_drives_a_torch_optimizer():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = build_scheduler(opt, ScheduleConfig(name="linear", warmup_steps=2,
                                                min_lr_ratio=0.0), max_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])
