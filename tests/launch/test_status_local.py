"""`launch status RUNDIR` of local runs, read from real run folders: a 2-rank gpt-tiny run stopped
on request (exit 75), held by a live lock, left with the lock of a process killed -9, resumed to
the end by `launch local` (taking the stale lock over), then failed (a non-finite loss, again
through `launch local`). Each state comes from the folder's own facts: run.lock,
run_events.jsonl, checkpoints, metrics.jsonl. The stopped and the resumed run are the shared
ones of tests/conftest.py (plot reads them too); each test works on its own copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch.__main__ import main
from launch.common import REPO
from launch.status import collect


def launch_local(run_dir, data, *extra: str, expect: int, env: dict | None = None) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "launch", "local", "--config",
         str(REPO / "configs" / "gpt-tiny.yaml"), "--nproc", "2", "--omp-threads", "1",
         f"run_dir={run_dir}", f"data.path={data}", "data.seq_len=32", "train.max_steps=8",
         "train.global_batch_size=8", "train.micro_batch_size=2", "checkpoint.every_steps=3",
         "eval.every_steps=4", "eval.max_samples=16", "logging.progress_bar=false", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})})
    assert res.returncode == expect, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture
def status(cli):
    """`launch status RUNDIR` in-process (test_status.py runs it as a subprocess)."""
    def run(run_dir, *args: str) -> str:
        res = cli(main, "status", run_dir, *args)
        assert res.code == 0, res.err
        assert "0.0 min" not in res.out and "Traceback" not in res.err
        return res.out

    return run


def test_status_of_a_stopped_run_a_live_lock_and_a_killed_one(stopped_run, runs, status,
                                                             tmp_path):
    from pretrain.train.runlock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    assert collect(run)["state"] == "not started"
    run.rmdir()

    runs.copy_run(stopped_run(1, 4), run)
    out = status(run)
    assert "state: stopped (stopped on request at step 4 (exit 75); resumable" in out
    assert "progress: step 4 of 8" in out
    assert "last complete checkpoint: step_00000004 (written by 2 ranks at ZeRO-1" in out
    assert "last metrics: step 4: loss " in out and "last validation: step 4: val_loss " in out
    assert "time left when resumed: < 1 min" in out

    lock = RunLock(run).acquire()  # a live holder: this process
    try:
        info = collect(run)
        assert info["state"] == "running" and info["lock"]["holder"]["pid"] == lock.record["pid"]
        assert f"the run lock is held: host {lock.record['host']}, pid {lock.record['pid']}" \
            in status(run)
    finally:
        lock.release()

    # The lock of a process killed -9 on this host: stale at once, the run is still resumable.
    runs.leave_killed_lock(run)
    out = status(run)
    assert "state: stopped" in out and "stale lock: host" in out and "its process is gone" in out


def test_status_of_the_resumed_run_then_a_failed_one(restarted_run, runs, tiny_data, status,
                                                     tmp_path):
    logs = (restarted_run.parent / "launch.log").read_text()
    assert "hardly make progress" not in logs  # at a real CPU's rate gpt-tiny is fine
    run = runs.copy_run(restarted_run, tmp_path / "run")  # resumed by `launch local`
    out = status(run)
    assert "state: finished (exited 0 at step 8)" in out and "progress: step 8 of 8" in out
    assert "ETA: done" in out and "step_00000008 (written by 2 ranks at ZeRO-" in out
    info = json.loads(status(run, "--json"))
    assert (info["state"], info["step"], info["max_steps"]) == ("finished", 8, 8)
    assert info["restarts_recorded"] == 1 and info["lock"] is None

    # A loss that cannot stay finite: exit 1, recorded with its reason and step. A CPU "as slow
    # as 1 kFLOP/s": the start-up warning of pretrain.train.cpu_check fires too.
    logs = launch_local(run, tiny_data, "deepspeed.zero_stage=1", "train.max_steps=12",
                        "checkpoint.every_steps=4", "optim.lr=1e30", "optim.grad_clip=0", expect=1,
                        env={"ARROWTRAIN_CPU_FLOPS": "1e3"})
    assert "this configuration will hardly make progress on CPU" in logs
    assert "start from configs/own-corpus-cpu.yaml" in logs
    out = status(run)
    assert "state: failed (exited 1 (failed) at step" in out and "non-finite" in out.lower()
    assert "the same command resumes from step_00000008" in out, out
