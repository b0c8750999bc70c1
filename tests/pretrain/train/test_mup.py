"""muP through the trainer's parts, without processes: each param group's lr follows the
schedule times its own factor, also after a resume that lost the groups' names (DeepSpeed's
ZeRO-3 universal load copies the first group's settings into every group) and after a changed
optim.lr; a resume that changes the parametrization is refused naming the key, and so is an
init_from file of the other parametrization."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pretrain.model import build_model
from pretrain.train.checkpoint import CheckpointError
from pretrain.train.checkpoint_meta import CheckpointMeta, DataFolderRecord
from pretrain.train.config import build_run_config, config_to_dict
from pretrain.train.engine import build_optimizer, param_groups
from pretrain.train.init_from import init_problems
from pretrain.train.resume import apply_hyperparameters, check_resume
from pretrain.train.schedule import build_scheduler

MODEL = {"family": "decoder", "vocab_size": 64, "max_seq_len": 16, "d_model": 32, "n_heads": 4,
         "n_layers": 1, "parametrization": "mup", "mup_base_width": 8}
BASE = {"run_dir": "/runs/x", "model": MODEL, "data": {"path": "/data/a", "seq_len": 16},
        "optim": {"lr": 1e-2, "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 2},
        "deepspeed": {"zero_stage": 1}}


def run_cfg(model=None, **sections):
    return build_run_config({**BASE, "model": {**MODEL, **(model or {})}, **sections})


def trainer_parts(cfg):
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = build_optimizer(param_groups(model, cfg.optim.weight_decay, cfg.model), cfg)
    return model, opt, build_scheduler(opt, cfg.schedule, cfg.train.max_steps)


def steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        x = torch.randint(0, 64, (2, 8))
        model(x, targets=x)["loss"].backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def lrs(opt) -> dict[str, tuple[float, float]]:
    return {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}


def test_each_group_follows_the_schedule_times_its_factor_through_a_resume():
    cfg = run_cfg()
    model, opt, sched = trainer_parts(cfg)
    steps(model, opt, sched, 3)
    expect = lrs(opt)
    peak, mult = 1e-2, sched.lr_lambdas[0](sched.last_epoch)
    assert expect["hidden"] == (pytest.approx(peak * mult / 4), pytest.approx(0.4))  # m = 4
    assert expect["embedding"] == (pytest.approx(peak * mult), 0.1)
    assert expect["vector"] == (pytest.approx(peak * mult), 0.0)
    saved = copy.deepcopy((opt.state_dict(), sched.state_dict()))

    for damage in ("none", "universal zero-3", "no names"):
        model2, opt2, sched2 = trainer_parts(cfg)
        opt2.load_state_dict(copy.deepcopy(saved[0]))
        sched2.load_state_dict(copy.deepcopy(saved[1]))
        first = {k: v for k, v in opt2.param_groups[0].items() if k != "params"}
        for g in opt2.param_groups:
            if damage == "universal zero-3":
                g.update(first)
            elif damage == "no names":
                g.pop("name"), g.pop("lr_scale")
        apply_hyperparameters(sched2, cfg)
        assert lrs(opt2) == expect, damage
    apply_hyperparameters(sched2, run_cfg(optim={"lr": 2e-2, "weight_decay": 0.1}))
    assert lrs(opt2) == {k: (pytest.approx(2 * lr), wd) for k, (lr, wd) in expect.items()}


FOLDERS = [DataFolderRecord(path="/data/a", weight=1.0, fingerprint="f" * 64)]


def _check(old, new):
    meta = CheckpointMeta(step=4, consumed_samples=32, data_fingerprint="f" * 64,
                          data_folders=FOLDERS, param_shapes={}, world_size=1,
                          config=config_to_dict(old))
    return check_resume(meta, new, {}, "f" * 64, FOLDERS, Path("/ck/step_00000004"))


def test_a_resume_may_not_change_the_parametrization():
    with pytest.raises(CheckpointError, match=r"model.parametrization: 'standard' → 'mup'"):
        _check(run_cfg({"parametrization": "standard"}), run_cfg())
    with pytest.raises(CheckpointError, match=r"model.mup_base_width: 8 → 16 \(muP"):
        _check(run_cfg(), run_cfg({"mup_base_width": 16}))
    standard = {"parametrization": "standard"}
    changes = _check(run_cfg(standard), run_cfg({**standard, "mup_base_width": 16}))
    assert [k for k, _, _ in changes] == ["model.mup_base_width"]  # unused by standard: kept


def test_init_from_refuses_the_other_parametrization(tmp_path):
    import json

    from safetensors.torch import save_model

    std = run_cfg({"parametrization": "standard"}).model
    path = tmp_path / "w.safetensors"
    save_model(build_model(std), str(path), metadata={"model_config": json.dumps(
        std.model_dump(mode="json"))})
    problems = [p.text for p in init_problems(run_cfg().model, path)]
    assert any("model.parametrization is 'mup'" in p and "'standard'" in p for p in problems)
    assert init_problems(std.model_copy(update={"mup_base_width": 99}), path) == []
