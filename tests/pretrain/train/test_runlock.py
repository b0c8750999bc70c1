"""RUNDIR/run.lock with real processes: a second holder is refused naming the first; a holder
killed with -9 does not keep the folder (same host: at once; another host: after its lease); a
requeued SLURM job takes over its own lock; a holder whose lock was taken over stops."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers.dist import REPO

from pretrain.train.runlock import LOCK_NAME, RunLock

LEASE_S = 5.0  # of the "remote" holder: long enough for its 0.5 s beats on a busy machine

HOLD = """
import sys, time
from pathlib import Path
from pretrain.logs import setup_logging
from pretrain.train.runlock import RunDirBusy, RunLock
setup_logging()
try:
    lock = RunLock(Path(sys.argv[1])).acquire()
except RunDirBusy as e:
    print(e, file=sys.stderr)
    sys.exit(2)
print("held", flush=True)
if sys.argv[2] == "wait":
    sys.stdin.read()  # hold until the test closes stdin
lock.release()
"""


def holder(run_dir: Path, env: dict | None = None) -> subprocess.Popen:
    """A process holding the lock until its stdin is closed."""
    return subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), "wait"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "held", (line, proc.stderr.read() if proc.poll() is not None else "")


def try_lock(run_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HOLD, str(run_dir), "now"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=60)


def remote_holder(run_dir: Path, beat_s: float, **record) -> subprocess.Popen:
    """A lock written as if by a run on another host, kept fresh by a real process touching it
    (what that run's heartbeat does over the shared filesystem)."""
    rec = {"host": "node-elsewhere", "pid": 4321, "pid_start": 1, "slurm_job_id": None,
           "restart_count": 0, "token": "remote", "started": "earlier", "heartbeat_s": beat_s,
           "lease_s": LEASE_S, **record}
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps(rec))
    code = ("import os, sys, time\n"
            "while True:\n"
            f"    os.utime({str(path)!r}); time.sleep({beat_s})\n")
    return subprocess.Popen([sys.executable, "-c", code])


def test_second_holder_is_refused_naming_the_first_and_released_lock_is_gone(tmp_path):
    first = holder(tmp_path)
    wait_held(first)
    second = try_lock(tmp_path, env={"SLURM_JOB_ID": "99"})
    assert second.returncode == 2, second.stderr
    host = socket.gethostname()
    assert f"run folder {tmp_path} is in use by another run: host {host}, pid {first.pid}" \
        in second.stderr
    assert "Traceback" not in second.stderr
    first.stdin.close()
    assert first.wait(30) == 0
    assert not (tmp_path / LOCK_NAME).exists()  # released on a clean exit


def test_kill_9_holder_on_this_host_is_taken_over_at_once(tmp_path):
    first = holder(tmp_path)
    wait_held(first)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert (tmp_path / LOCK_NAME).exists()  # a killed holder leaves its file behind
    t0 = time.monotonic()
    second = try_lock(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "taking over the lock" in second.stderr and "its process is gone" in second.stderr
    assert time.monotonic() - t0 < 30  # no lease to wait for on the same host


def test_other_host_holder_is_refused_while_it_beats_and_taken_over_after_its_lease(tmp_path):
    beat = remote_holder(tmp_path, beat_s=0.5, slurm_job_id="777")
    try:
        time.sleep(0.3)
        refused = try_lock(tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "host node-elsewhere, pid 4321, SLURM job 777 (restart 0)" in refused.stderr
        assert re.search(r"last heartbeat \d s ago", refused.stderr), refused.stderr
    finally:
        beat.send_signal(signal.SIGKILL)  # the remote run dies: its heartbeat stops
        beat.wait(30)
    assert try_lock(tmp_path).returncode == 2  # its last heartbeat is still within the lease
    last = time.time() - LEASE_S - 1           # the lease runs out (the file's age says so)
    os.utime(tmp_path / LOCK_NAME, (last, last))
    took = try_lock(tmp_path)
    assert took.returncode == 0, took.stderr
    assert "no heartbeat for" in took.stderr


def test_requeued_slurm_job_takes_over_its_own_lock(tmp_path):
    beat = remote_holder(tmp_path, beat_s=0.5, slurm_job_id="4242", restart_count=0)
    try:
        time.sleep(0.3)
        same = try_lock(tmp_path, env={"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "0"})
        assert same.returncode == 2, same.stderr  # same incarnation (a second srun): refused
        requeued = try_lock(tmp_path, env={"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"})
        assert requeued.returncode == 0, requeued.stderr
        assert "an earlier incarnation of this SLURM job (requeued)" in requeued.stderr
    finally:
        beat.send_signal(signal.SIGKILL)
        beat.wait(30)


def test_holder_whose_lock_was_taken_over_stops_at_once(tmp_path):
    first = holder(tmp_path, env={"ARROWTRAIN_LOCK_HEARTBEAT_S": "0.2"})
    wait_held(first)
    path = tmp_path / LOCK_NAME
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "token": "someone-else"}))  # what a takeover leaves
    assert first.wait(30) == 1
    assert "was taken over by another run" in first.stderr.read()
    assert json.loads(path.read_text())["token"] == "someone-else"  # not removed by the loser


def test_lock_records_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "31")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    lock = RunLock(tmp_path, heartbeat_s=60).acquire()
    try:
        rec = json.loads((tmp_path / LOCK_NAME).read_text())
        assert (rec["host"], rec["pid"], rec["slurm_job_id"], rec["restart_count"]) == (
            socket.gethostname(), os.getpid(), "31", 2)
        assert rec["lease_s"] == 360 and lock.owned()
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
