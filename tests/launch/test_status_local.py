"""`launch status RUNDIR` of local runs, read from real run folders: a 2-rank gpt-tiny run
started with `launch local`, stopped on request (exit 75), held by a live lock, left with the lock
of a process killed -9, resumed to the end, then failed (a non-finite loss). Each state comes
from the folder's own facts: run.lock, run_events.jsonl, checkpoints, metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launch.common import REPO
from launch.status import collect


def launch_local(run_dir, data, *extra: str, expect: int, env: dict | None = None) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "launch", "local", "--config",
         str(REPO / "configs" / "gpt-tiny.yaml"), "--nproc", "2", "--omp-threads", "1", f"run_dir={run_dir}", f"data.path={data}",
         "model.vocab_size=null", "data.seq_len=32", "train.max_steps=8",
         "train.global_batch_size=8", "train.micro_batch_size=2", "checkpoint.every_steps=4",
         "eval.every_steps=4", "eval.max_samples=16", "logging.progress_bar=false", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})})
    assert res.returncode == expect, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def status(run_dir) -> str:
    res = subprocess.run([sys.executable, "-m", "launch", "status", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "0.0 min" not in res.stdout and "Traceback" not in res.stderr
    return res.stdout


def test_status_follows_a_local_run_through_its_states(tiny_data, tmp_path):
    from pretrain.train.runlock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    assert collect(run)["state"] == "not started"

    # A CPU "as slow as 1 kFLOP/s": the start-up warning of pretrain.train.cpu_check fires.
    logs = launch_local(run, tiny_data, "train.stop_at_step=4", expect=75,
                        env={"ARROWTRAIN_CPU_FLOPS": "1e3"})
    assert "this configuration will hardly make progress on CPU" in logs
    assert "start from configs/own-corpus-cpu.yaml" in logs
    out = status(run)
    assert "state: stopped (stopped on request at step 4 (exit 75); resumable" in out
    assert "progress: step 4 of 8" in out
    assert "last complete checkpoint: step_00000004 (written by 2 ranks at ZeRO-" in out
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
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; from pretrain.train.runlock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)", str(run)],
        cwd=REPO, timeout=60)
    assert killed.returncode == -9 and (run / "run.lock").is_file()
    out = status(run)
    assert "state: stopped" in out and "stale lock: host" in out and "its process is gone" in out

    logs = launch_local(run, tiny_data, expect=0)  # resumes (taking over the stale lock), finishes
    assert "hardly make progress" not in logs  # at a real CPU's rate gpt-tiny is fine
    out = status(run)
    assert "state: finished (exited 0 at step 8)" in out and "progress: step 8 of 8" in out
    assert "ETA: done" in out and "step_00000008 (written by 2 ranks at ZeRO-" in out
    info = json.loads(subprocess.run(
        [sys.executable, "-m", "launch", "status", str(run), "--json"], cwd=REPO,
        capture_output=True, text=True, timeout=60).stdout)
    assert (info["state"], info["step"], info["max_steps"]) == ("finished", 8, 8)
    assert info["restarts_recorded"] == 1 and info["lock"] is None

    # A loss that cannot stay finite: exit 1, recorded with its reason and step.
    launch_local(run, tiny_data, "train.max_steps=12", "optim.lr=1e30", "optim.grad_clip=0",
                 expect=1)
    out = status(run)
    assert "state: failed (exited 1 (failed) at step" in out and "non-finite" in out.lower()
    assert "the same command resumes from step_00000008" in out
