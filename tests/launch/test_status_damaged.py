"""`launch status`, the run lock and the metrics file on damaged run folders (issue 19 item 8):
an exit code "abc" in run_events.jsonl, a bare number in metrics.jsonl, a binary `latest`,
`lease_s: "abc"` in run.lock, a run.lock that is a directory — a clear message, never a
traceback; and with `latest` deleted (or `resume: never`) status says what the trainer will do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from launch.common import REPO
from launch.status import collect
from pretrain.train.metrics import truncate_metrics
from pretrain.train.runlock import LOCK_NAME, RunDirBusy, RunLock
from tests.launch.test_status import write_checkpoint


@pytest.fixture
def run(tmp_path):
    """A run stopped at step 8 (exit 75), checkpoints 4 and 8, metrics, a config."""
    ckpts = tmp_path / "checkpoints"
    write_checkpoint(ckpts, 4, world_size=2)
    write_checkpoint(ckpts, 8, world_size=2)
    (ckpts / "latest").write_text("step_00000008\n")
    (tmp_path / "config.yaml").write_text("resume: auto\ntrain:\n  max_steps: 20\n")
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 5.0, "step_time_ms": 100.0}) + "\n"
                     for s in range(1, 9))
    events = [{"event": "start", "step": 0, "time": 1.0},
              {"event": "exit", "code": 75, "step": 8, "time": 2.0}]
    (tmp_path / "run_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return tmp_path


def status(run_dir) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "launch", "status", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
    return res


def test_an_exit_code_that_is_no_number(run):
    with open(run / "run_events.jsonl", "a") as f:
        f.write(json.dumps({"event": "exit", "code": "abc", "step": 8, "time": 3.0}) + "\n")
    out = status(run).stdout
    assert "state: failed (its last exit record holds no exit code ('abc': run_events.jsonl " \
           "is damaged); resumable: the same command resumes from step_00000008)" in out


def test_metrics_lines_that_are_no_rows(run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write("5\n[1, 2]\n" + json.dumps({"step": "abc", "loss": 1.0}) + "\n"
                + json.dumps({"step": 9, "loss": 4.0, "step_time_ms": "slow"}) + "\n")
    out = status(run).stdout
    assert "last metrics: step 9: loss 4" in out and "progress: step 9 of 20" in out
    # the trainer's resume cut (rank 0) drops them with a warning instead of a traceback
    truncate_metrics(run / "metrics.jsonl", 8)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))


def test_a_binary_latest(run):
    (run / "checkpoints" / "latest").write_bytes(os.urandom(64) + b"\xff\xfe")
    out = status(run).stdout
    assert "the same command resumes from step_00000008" in out
    assert "latest cannot be read" in out


def test_latest_deleted_says_what_the_trainer_will_do(run):
    (run / "checkpoints" / "latest").unlink()
    out = status(run).stdout
    assert "resumable: the same command resumes from step_00000008" in out
    assert "latest is missing; the trainer resumes from the newest complete checkpoint" in out


def test_resume_never_says_the_same_command_starts_over(run):
    (run / "config.yaml").write_text("resume: never\ntrain:\n  max_steps: 20\n")
    info = collect(run)
    assert info["resume"] == "never" and info["state"] == "stopped"
    assert info["why"].endswith("the same command starts over at step 0 (resume: never in its "
                                "config.yaml), writing over the checkpoints (step_00000008 …)")
    assert "resumes from" not in info["why"]


def test_no_checkpoint_never_says_resumes_from_nothing(tmp_path):
    (tmp_path / "run_events.jsonl").write_text(
        json.dumps({"event": "exit", "code": 75, "step": 0, "time": 1.0}) + "\n")
    info = collect(tmp_path)
    assert info["why"].endswith("the same command starts at step 0 (no complete checkpoint to "
                                "resume from)"), info["why"]


def test_a_lock_record_with_a_lease_that_is_no_number(run, monkeypatch):
    monkeypatch.setenv("ARROWTRAIN_LOCK_LEASE_S", "30")
    lock = run / LOCK_NAME
    lock.write_text(json.dumps({"host": "elsewhere", "pid": "x", "lease_s": "abc",
                                "restart_count": "?", "slurm_job_id": None}))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    out = status(run).stdout
    assert "stale lock: host elsewhere, pid x" in out and "lease 30 s" in out
    taken = RunLock(run).acquire()  # the lease decides: an hour without heartbeat is stale
    taken.release()


def test_a_lock_that_is_a_directory(run):
    (run / LOCK_NAME).mkdir()
    out = status(run).stdout
    assert f"damaged lock: {run / LOCK_NAME} is a directory, not a run lock" in out
    assert f"rm -r {run / LOCK_NAME}" in out
    with pytest.raises(RunDirBusy) as err:
        RunLock(run).acquire()
    assert "is a directory, not a run lock" in str(err.value)

