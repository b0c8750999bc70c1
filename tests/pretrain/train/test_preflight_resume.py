"""The pre-flight against the checkpoint a start resumes from (issue 18 item 5): a changed model
is refused before any rank starts — `launch local --dry-run` included — naming the model keys
(`model.n_layers: 2 → 3`), not the parameters a rank would list later; a train.max_steps below
the checkpoint's step is refused; a changed lr schedule (a shorter train.max_steps) is announced
with the learning rate before → after. The checkpoint here is its meta.json alone (what the
pre-flight reads; a rank verifies every file)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.dist import REPO

from data_tools.atomic import write_atomic
from pretrain.configlib import ConfigError
from pretrain.train.checkpoint_meta import CheckpointMeta
from pretrain.train.config import config_to_dict
from pretrain.train.preflight import check_run

GPT_TINY = REPO / "configs" / "gpt-tiny.yaml"
STEP = 6


def _overrides(run_dir, data, *extra):
    return [f"run_dir={run_dir}", f"data.path={data}", "train.max_steps=20", *extra]


def _checkpoint(run_dir, data, *extra) -> CheckpointMeta:
    """A checkpoint at STEP written by a run of gpt-tiny with these overrides."""
    cfg = check_run(GPT_TINY, _overrides(run_dir, data, *extra), world_size=2)
    meta = CheckpointMeta(step=STEP, consumed_samples=STEP * 8, data_fingerprint="f" * 64,
                          param_shapes={}, world_size=2, config=config_to_dict(cfg))
    tag = run_dir / "checkpoints" / "step_00000006"
    tag.mkdir(parents=True)
    write_atomic(tag / "meta.json", meta.model_dump_json())
    write_atomic(run_dir / "checkpoints" / "latest", "step_00000006\n")
    return meta


def test_a_changed_model_is_named_key_by_key_before_any_rank_starts(tiny_data, tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, tiny_data)
    with pytest.raises(ConfigError) as err:
        check_run(GPT_TINY, _overrides(run, tiny_data, "model.n_layers=3", "model.d_model=96"),
                  world_size=2)
    text = str(err.value)
    assert "the model changed since checkpoint" in text and "step_00000006 (step 6)" in text
    assert "model.d_model: 64 → 96; model.n_layers: 2 → 3" in text, text
    assert "resume=never" in text
    # Settings that build the same parameters resume (the ranks warn about them).
    check_run(GPT_TINY, _overrides(run, tiny_data, "model.dropout=0.0"), world_size=2)
    # Starting over does not look at the checkpoint.
    check_run(GPT_TINY, _overrides(run, tiny_data, "model.n_layers=3", "resume=never"),
              world_size=2)


def test_launch_local_dry_run_refuses_a_changed_model(tiny_data, tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, tiny_data)
    res = subprocess.run([sys.executable, "-m", "launch", "local", "--config", str(GPT_TINY),
                          "--nproc", "2", "--dry-run",
                          *_overrides(run, tiny_data, "model.n_layers=3")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "model.n_layers: 2 → 3" in res.stderr and "`model.n_layers=3`" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_max_steps_below_the_checkpoint_is_refused(tiny_data, tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, tiny_data)
    with pytest.raises(ConfigError) as err:
        check_run(GPT_TINY, _overrides(run, tiny_data, "train.max_steps=4",
                                       "schedule.warmup_steps=1"), world_size=2)
    assert "train.max_steps (4) is below the step of checkpoint" in str(err.value)


def test_a_shorter_max_steps_announces_the_lr_before_and_after(tiny_data, tmp_path):
    from pretrain.train.preflight import resume_findings
    from pretrain.train.schedule import lr_at

    run = tmp_path / "run"
    meta = _checkpoint(run, tiny_data)
    cfg = check_run(GPT_TINY, _overrides(run, tiny_data, "train.max_steps=10"), world_size=2)
    before, after = lr_at(meta.config, STEP), lr_at(cfg, STEP)
    assert after < before  # cosine over 10 steps is further down at step 6 than over 20
    problems, notes = resume_findings(cfg)
    assert problems == []
    assert notes == [f"resuming from {run / 'checkpoints' / 'step_00000006'} at step 6: the "
                     f"learning rate of step 7 jumps from {before:.4g} to {after:.4g} (the "
                     "schedule now ends at train.max_steps 10, not 20)"]
    same = check_run(GPT_TINY, _overrides(run, tiny_data), world_size=2)
    assert resume_findings(same) == ([], [])
    res = subprocess.run([sys.executable, "-m", "launch", "local", "--config", str(GPT_TINY),
                          "--nproc", "2", "--dry-run",
                          *_overrides(run, tiny_data, "train.max_steps=10")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"warning: {notes[0]}" in res.stderr


def test_lr_jump_names_what_changed():
    from pretrain.train.schedule import lr_jump

    old = {"optim": {"lr": 1e-3}, "train": {"max_steps": 100},
           "schedule": {"name": "constant", "warmup_steps": 0}}
    from pretrain.train.config import build_run_config

    new = build_run_config({
        "run_dir": "/r", "model": {"family": "decoder", "max_seq_len": 32, "d_model": 32,
                                   "n_heads": 4, "n_layers": 1},
        "data": {"path": "/d", "seq_len": 32}, "optim": {"lr": 5e-4},
        "schedule": {"name": "constant"},
        "train": {"max_steps": 100, "global_batch_size": 8, "micro_batch_size": 2}})
    assert lr_jump(old, new, 50) == ("the learning rate of step 51 jumps from 0.001 to 0.0005 "
                                     "(the lr settings changed)")
    assert lr_jump({"optim": {}}, new, 50) is None  # an unreadable old config: no claim

