"""A universal copy (`step_N_universal`, pretrain/train/reshard.py) belongs to the `step_N` it
was converted from, never to a later `step_N` of the same name (issue 19 item 1: a run started
over with resume=never, or rolled back by deleting step_N, wrote step_N again; a resume on
another rank count then loaded the *previous* lineage's weights and Adam moments, exit 0, no
warning). The copy is removed when step_N is written again or the run starts over, it records
the sha256 of the original's meta.json, and a copy whose record differs is converted again.
Losses are compared with the uninterrupted 2-rank run (dropout off, as in
test_world_size_change.py)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers.dist import run_python, run_ranks

STOP = "step_00000004"
UNIVERSAL = STOP + "_universal"
SPIKE = "optim.lr=2e-2"  # another lineage: same shapes, other weights


@pytest.fixture(scope="module")
def ref(straight_run, runs):
    """The uninterrupted 2-rank run, dropout off (the ZeRO stages agree to ~1e-7: the ZeRO-0
    reference test_world_size_change.py uses too)."""
    return runs.train_losses(straight_run(0, "model.dropout=0.0"))


def _args(runs, tiny_data, run, *extra):
    return runs.small_run_args(run, tiny_data, 2, "model.dropout=0.0", *extra)


def _export_universal(run, deepspeed_log="warning"):
    res = run_python(["-m", "arrowtrain.commands.export", str(run), "--format", "universal"],
                     timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu",
                                       "ARROWTRAIN_DEEPSPEED_LOG": deepspeed_log})
    assert res.returncode == 0, res.stderr
    # DeepSpeed's own prints only when asked for (issue 18 item 7)
    assert ("Extracting ZeRO fragments" in res.stderr) == (deepspeed_log == "info"), res.stderr
    return res


def _assert_tracks(got, want):
    """Steps 5-8 (after the re-sharded resume) follow the reference run."""
    assert [s for s, _ in got] == list(range(1, 9)), got
    for (step, a), (_, b) in zip(got[4:], want[4:]):
        assert a == pytest.approx(b, rel=1e-3), f"step {step}: {a} vs {b} (stale weights?)"


def _losses_after(runs, run):
    """The last logged loss of each step (a resumed run logs steps again after a restart)."""
    return sorted({s: loss for s, loss in runs.train_losses(run)}.items())


def test_restart_with_resume_never_drops_the_old_universal_copy(tiny_data, runs, ref, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    # The first lineage (another lr), converted offline for a resume elsewhere.
    run_ranks(_args(runs, tiny_data, run, SPIKE, "train.stop_at_step=4"), tmp_path / "a",
              expect=75)
    _export_universal(run, deepspeed_log="info")
    old_copy = tmp_path / "old_copy"
    shutil.copytree(ckpts / UNIVERSAL, old_copy)
    # Start over in the same folder (what the tool advises for a changed run).
    run_ranks(_args(runs, tiny_data, run, "resume=never", "train.stop_at_step=4"), tmp_path / "b",
              expect=75)
    assert not (ckpts / UNIVERSAL).exists(), "the old lineage's universal copy survived"
    # A copy of the old lineage put back (an older tool, a copy from another cluster): its
    # record names another meta.json, so it is converted again, not loaded.
    shutil.copytree(old_copy, ckpts / UNIVERSAL)
    one = run_ranks(_args(runs, tiny_data, run), tmp_path / "c", world_size=1)
    logs = one.logs(tail=10_000)
    assert "re-shard from 2 to 1 ranks" in logs and "at step 4" in logs, logs
    assert "converted from an earlier" in logs, logs
    assert "Extracting ZeRO fragments" not in logs  # DeepSpeed's chatter stays out of the log
    source = json.loads((ckpts / UNIVERSAL / "meta.json").read_text())["source_meta_sha256"]
    assert source == _sha256(ckpts / STOP / "meta.json")
    _assert_tracks(_losses_after(runs, run), ref)


def test_rollback_by_deleting_step_n_drops_its_universal_copy(tiny_data, runs, ref, tmp_path):
    """Roll back after a loss spike: delete step_4 (written at a spiking lr), resume from
    step_3 with the good lr, then on another rank count."""
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    run_ranks(_args(runs, tiny_data, run, "train.stop_at_step=3"), tmp_path / "a", expect=75)
    run_ranks(_args(runs, tiny_data, run, SPIKE, "train.stop_at_step=4"), tmp_path / "b",
              expect=75)
    _export_universal(run)
    shutil.rmtree(ckpts / STOP)
    (ckpts / "latest").write_text("step_00000003\n")
    run_ranks(_args(runs, tiny_data, run, "train.stop_at_step=4"), tmp_path / "c", expect=75)
    assert not (ckpts / UNIVERSAL).exists(), "step_4 was written again beside a stale copy"
    run_ranks(_args(runs, tiny_data, run), tmp_path / "d", world_size=1)
    _assert_tracks(_losses_after(runs, run), ref)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_offline_conversion_takes_the_run_lock(tmp_path):
    """`export --format universal` beside a live run (or another conversion) is refused naming
    the holder, instead of racing it ("Directory not empty")."""
    from pretrain.train.runlock import RunLock

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    lock = RunLock(run, purpose="a test holding the folder").acquire()
    try:
        res = run_python(["-m", "arrowtrain.commands.export", str(run), "--format",
                          "universal"], timeout=300)
    finally:
        lock.release()
    assert res.returncode == 2, res.stderr
    assert f"run folder {run} is in use by another run: host" in res.stderr
    assert "(a test holding the folder)" in res.stderr and res.stdout == ""
