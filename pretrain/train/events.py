"""RUNDIR/run_events.jsonl: one line per start and per exit of a run, written by rank 0.

`start` is written once the resume check passed and the run folder's lock is held (so a refused
resume or a busy folder leaves no trace); `exit` on the way out with the exit code, the reason
and the step reached. A run killed hard (kill -9, out of memory, a lost node) writes no `exit`:
`launch status` then finds its `start` without one and the lock it left behind. Lines are
appended whole with one write and fsync'd; a line cut short by a crash is skipped on reading.
Torch-free: `launch status` and `arrowtrain plot` read it."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "run_events.jsonl"


def record(run_dir: Path, event: str, **fields: Any) -> dict[str, Any]:
    row = {"event": event, "time": time.time(), "host": socket.gethostname(),
           "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
           "restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0), **fields}
    fd = os.open(Path(run_dir) / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return row


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line cut short by a crash, or one that holds
    another JSON value (a damaged file), is skipped. A missing file has none."""
    rows = []
    try:
        text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    except OSError:  # unreadable (permissions): launch status reports what it can
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [row for row in read_jsonl(Path(run_dir) / EVENTS_FILE) if "event" in row]
