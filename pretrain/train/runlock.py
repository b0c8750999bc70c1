"""One run per run folder: RUNDIR/run.lock, a lease that works on shared cluster filesystems.

fcntl/flock locks are unreliable on NFS and Lustre (lock daemons, `-o nolock`, `localflock`) and
vanish or linger with the client that held them. This lock relies only on what those filesystems
do guarantee: creating a hard link fails if the name exists (atomically, NFS included — the
classic NFS lock-file technique), and a rename is atomic.

- Taking it: write the holder (host, pid and the pid's start time, SLURM job id and restart
  count, a random token) to a file of its own, then link it to `run.lock`: the lock is never
  seen empty or half written.
- Holding it: rank 0 refreshes the file's mtime every `heartbeat_s` seconds (a daemon thread),
  after checking that the token in it is still its own.
- A lock is stale when its holder cannot be running any more: on the same host its pid is gone
  (or is another process); an earlier incarnation of the same SLURM job (lower restart count:
  a requeued job takes over its own lock); or else its mtime is older than `lease_s` (6 missed
  heartbeats; clocks of a SLURM cluster are synchronised, munge requires it).
- Taking over a stale lock renames it to a unique name first (atomic: of several starters, one
  wins) and checks that what it renamed is the stale lock it judged, then creates a new one.
- A holder whose lock was taken over (its heartbeat was stalled longer than the lease) stops at
  once without writing anything further.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
EXIT_LOCK_LOST = 1


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class RunDirBusy(RuntimeError):
    """Another run holds the run folder (raised on every rank alike)."""

    all_ranks = True


def _pid_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
    the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _pid_start(pid)
    return start is None or now is None or now == start


def holder_record(heartbeat_s: float, lease_s: float, purpose: str | None = None,
                  ) -> dict[str, Any]:
    env = os.environ
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
           "slurm_job_id": env.get("SLURM_JOB_ID"),
           "restart_count": int(env.get("SLURM_RESTART_COUNT") or 0),
           "token": uuid.uuid4().hex, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "heartbeat_s": heartbeat_s, "lease_s": lease_s}
    if purpose:  # a holder other than a training run, e.g. an offline conversion
        rec["purpose"] = purpose
    return rec


def describe(rec: dict[str, Any], age: float | None) -> str:
    job = f", SLURM job {rec['slurm_job_id']} (restart {rec.get('restart_count', 0)})" \
        if rec.get("slurm_job_id") else ""
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    what = f" ({rec['purpose']})" if rec.get("purpose") else ""
    return (f"host {rec.get('host', '?')}, pid {rec.get('pid', '?')}{what}{job}, "
            f"started {rec.get('started', '?')}{beat}")


def _read(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    """(record or None if empty/garbled, mtime); raises FileNotFoundError if there is none."""
    with path.open("rb") as f:  # open() revalidates NFS attribute caches (close-to-open)
        mtime = os.fstat(f.fileno()).st_mtime
        data = f.read()
    try:
        rec = json.loads(data)
        return (rec if isinstance(rec, dict) else None), mtime
    except ValueError:
        return None, mtime


def _number(value: Any, default: float) -> float:
    """A number from a lock record that may be damaged (a string, null, a list): the default
    unless it is a finite, positive-or-zero number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value) if 0 <= value < float("inf") else default


def not_a_lock_message(path: Path) -> str:
    kind = "a directory" if path.is_dir() else "not a regular file"
    return (f"{path} is {kind}, not a run lock (arrowtrain writes a small JSON file there): "
            "no run can start in this folder until it is removed; if no run uses the folder, "
            f"remove it (rm -r {shlex.quote(str(path))})")


def stale_reason(rec: dict[str, Any] | None, mtime: float, lease_s: float) -> str | None:
    """Why the holder cannot be running any more, or None if it may be. A damaged record (a
    field of the wrong type) counts as its defaults: the lease decides."""
    age = time.time() - mtime
    if rec is None:  # created, never written: its creator died between the two
        return f"an empty lock {age:.0f} s old" if age > lease_s else None
    me = holder_record(0, 0)
    if rec.get("slurm_job_id") and rec["slurm_job_id"] == me["slurm_job_id"] \
            and _number(rec.get("restart_count"), 0) < me["restart_count"]:
        return "an earlier incarnation of this SLURM job (requeued)"
    pid = rec.get("pid")
    if rec.get("host") == me["host"] and isinstance(pid, int) and not isinstance(pid, bool) \
            and pid > 0:
        start = rec.get("pid_start") if isinstance(rec.get("pid_start"), int) else None
        return None if _pid_alive(pid, start) else "its process is gone"
    lease = _number(rec.get("lease_s"), lease_s) or lease_s
    return f"no heartbeat for {age:.0f} s (lease {lease:.0f} s)" if age > lease else None


class RunLock:
    """Held by rank 0 of a run (`acquire`), released by `release` (or by its lease running out
    after a kill)."""

    def __init__(self, run_dir: Path, heartbeat_s: float | None = None,
                 lease_s: float | None = None, purpose: str | None = None):
        self.path = Path(run_dir) / LOCK_NAME
        self.heartbeat_s = heartbeat_s or _env_float("ARROWTRAIN_LOCK_HEARTBEAT_S", 10.0)
        self.lease_s = lease_s or _env_float("ARROWTRAIN_LOCK_LEASE_S", 6 * self.heartbeat_s)
        self.record = holder_record(self.heartbeat_s, self.lease_s, purpose)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLock:
        for _ in range(5):
            if self.path.exists() and not self.path.is_file():
                raise RunDirBusy(not_a_lock_message(self.path))
            if self._create():
                self._start_heartbeat()
                return self
            try:
                rec, mtime = _read(self.path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except OSError as e:  # e.g. made a directory meanwhile, or unreadable
                raise RunDirBusy(f"{self.path} cannot be read ({e.strerror or e}): "
                                 "no run can start in this folder until it is fixed") from None
            why = stale_reason(rec, mtime, self.lease_s)
            if why is None:
                raise RunDirBusy(self._busy_message(rec, mtime))
            log.warning("taking over the lock of %s: %s (%s)", self.path.parent,
                        describe(rec or {}, time.time() - mtime), why)
            self._remove_if_same(rec)
        raise RunDirBusy(f"could not take the lock {self.path}: other runs keep taking it")

    def _create(self) -> bool:
        """Write the record to a file of our own, then hard-link it to `run.lock`: link() is
        atomic and fails if the name exists (also on NFS), and the lock is never seen empty."""
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.record['token']}")
        try:
            with tmp.open("w") as f:
                json.dump(self.record, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if_same(self, judged: dict[str, Any] | None) -> None:
        """Remove the stale lock atomically: rename it away, then check it is the one judged
        (another starter may have replaced it meanwhile: then put that one back)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.record['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved, _ = _read(aside)
            if (moved or {}).get("token") != (judged or {}).get("token"):
                with contextlib.suppress(FileExistsError):  # yet another lock: keep that one
                    os.link(aside, self.path)
        finally:
            aside.unlink(missing_ok=True)

    def _busy_message(self, rec: dict[str, Any] | None, mtime: float) -> str:
        age = time.time() - mtime
        who = describe(rec, age) if rec else f"a run starting up ({age:.0f} s ago)"
        lease = _number((rec or {}).get("lease_s"), self.lease_s) or self.lease_s
        return (f"run folder {self.path.parent} is in use by another run: {who}. Two runs in "
                "one folder would overwrite each other's checkpoints and metrics, so this one "
                f"stops. If that run is dead, its lock ({self.path}) lapses {lease:.0f} s after "
                "its last heartbeat (at once when it ran on this host); then start again.")

    # ---- holding -------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def owned(self) -> bool:
        try:
            rec, _ = _read(self.path)
        except OSError:  # gone, or replaced by something that is not a lock file
            return False
        return (rec or {}).get("token") == self.record["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.owned() and not (not self.path.exists() and self._create()):
                    self._lost()  # another run's lock is there (deleted ones are recreated)
                now = time.time()
                os.utime(self.path, (now, now))
            except OSError as e:  # a filesystem hiccup: try again at the next beat
                log.warning("could not refresh the run lock %s: %s", self.path, e)

    def _lost(self) -> None:
        log.error("the run lock %s was taken over by another run (this run's heartbeat "
                  "stalled for longer than the %.0f s lease); stopping at once, without saving, "
                  "so that two runs never write into one folder", self.path, self.lease_s)
        logging.shutdown()
        os._exit(EXIT_LOCK_LOST)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.owned():
            self.path.unlink(missing_ok=True)


def acquire_collective(run_dir: Path, rank: int) -> RunLock | None:
    """Rank 0 takes the lock; every rank learns the outcome (one broadcast), so a refused start
    ends on all ranks with the same message. Returns the lock on rank 0, None elsewhere."""
    import torch.distributed as dist

    lock, outcome = None, [None]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = RunLock(run_dir).acquire()
        except RunDirBusy as e:
            outcome = [str(e)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise RunDirBusy(outcome[0])
    return lock
