"""`python -m launch status RUNDIR`: where a run stands, local or SLURM.

The state comes from facts in the run folder, in this order:
- **running**: RUNDIR/run.lock is held by a live run (its process is alive on this host, or its
  heartbeat is younger than the lease elsewhere: `pretrain.train.runlock`);
- else the last line of RUNDIR/run_events.jsonl (`pretrain.train.events`): an `exit` with code 0
  is **finished**, 75 **stopped** (resumable), anything else **failed**; a `start` without an
  `exit` is a run killed hard (kill -9, out of memory, a lost node): **stopped** (resumable) when
  there is a checkpoint to resume from, else **failed**;
- with no events (a folder from before they existed): **finished** when the last complete
  checkpoint is at train.max_steps, **stopped** when there is one, else **not started**.

Also: the last step of max_steps, the last training and validation metrics, the measured memory
peak per rank next to `arrowtrain plan`'s figure, an ETA in human units from the median recent
step time, the checkpoint the same command resumes from (the trainer's own choice:
`pretrain.train.checkpoint_meta.find_resume_tag`, meta.json read as the trainer's
`CheckpointMeta`) and the rank count and ZeRO stage it was written with (and whether a
re-sharded universal copy is beside it), with `checkpoint.remote` the step the remote `latest`
names (or that the store did not answer within a few seconds), the lock holder. For SLURM runs also the job id from
RUNDIR/slurm/jobs, its state from `squeue` or the job-completion record (`sacct -c`), the batch
script's events (start / requeue / finished / failed with exit code). Torch-free.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from launch.slurm import EVENTS_FILE, JOBS_FILE
from pretrain.configlib import parse_yaml
from pretrain.data.remote_plan import human_bytes
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_RESUME, describe_exit
from pretrain.logs import human_duration
from pretrain.train import runlock
from pretrain.train.checkpoint_meta import (
    CheckpointMeta,
    find_resume_tag,
    read_meta,
    resume_order,
    tag_step,
    universal_copy_state,
)
from pretrain.train.events import EVENTS_FILE as RUN_EVENTS
from pretrain.train.events import read_events, read_jsonl

RECENT_STEPS = 20  # ETA from the median step time of the last rows


def _tool(*cmd: str) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _float(value: Any) -> float | None:
    """A finite number from a damaged file's field (or a numeric string); else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _int(value: Any) -> int | None:
    """An int from a damaged file's field: None unless it is a whole number."""
    number = _float(value)
    return int(number) if number is not None and number.is_integer() else None


def job_state(job_id: str) -> dict[str, Any]:
    """squeue while the job is known to slurmctld, else its completion record."""
    out = _tool("squeue", "-h", "-j", job_id, "-o", "%T|%M|%l|%R")
    if out:
        state, elapsed, limit, reason = out.splitlines()[0].split("|", 3)
        return {"state": state, "elapsed": elapsed, "time_limit": limit, "reason": reason,
                "source": "squeue"}
    out = _tool("sacct", "-c", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode")
    if out:
        _, state, exit_code = out.splitlines()[-1].split("|")[:3]
        return {"state": state, "exit_code": exit_code, "source": "jobcomp"}
    return {"state": "UNKNOWN", "source": "none"}


_SRUN_LABEL = re.compile(r"^\d+: ")


def failure_reason(slurm_dir: Path, job_id: str, lines: int = 8) -> list[str]:
    """The FAILED line and the last error-looking lines of the job's log, each with the
    indented lines that continue it (a config error lists its problems below its first line)."""
    log = slurm_dir / f"job-{job_id}.out"
    if not log.is_file():
        return []
    hits: list[str] = []
    continuing = False
    for line in log.read_text(errors="replace").splitlines():
        if any(k in line for k in ("ERROR", "Error", "error:", "FAILED")):
            hits.append(line)
            continuing = True
        elif continuing and _SRUN_LABEL.sub("", line).startswith(" "):
            hits.append(line)
        else:
            continuing = False
    return hits[-lines:]


def checkpoint_layout(tag_dir: Path, meta: CheckpointMeta) -> dict[str, Any]:
    """How the checkpoint was written: ranks, ZeRO stage, and whether a re-sharded universal
    copy (`TAG_universal`, pretrain/train/reshard.py) of this very checkpoint is beside it (a
    stale one, of an earlier writing of the tag, is converted again when needed)."""
    state = universal_copy_state(tag_dir.parent, tag_dir.name)
    layout = {"ranks": meta.world_size, "zero_stage": meta.zero_stage,
              "universal_copy": state == "current"}
    if state == "stale":
        layout["stale_universal_copy"] = True
    return layout


def max_steps_of(run_dir: Path) -> int | None:
    """train.max_steps of the run as it last started (RUNDIR/config.yaml)."""
    try:
        cfg = parse_yaml((run_dir / "config.yaml").read_text())
        return int(cfg["train"]["max_steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def data_location(run_dir: Path) -> dict[str, Any] | None:
    """Where the run reads its data (RUNDIR/config.yaml): the folders, and for s3:// ones the
    node cache (folder and limit; the default limit depends on each node's free space)."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    path = data.get("path")
    paths = [path] if isinstance(path, str) else [e.get("path") for e in path or []]
    out: dict[str, Any] = {"paths": paths}
    if any(isinstance(p, str) and p.startswith("s3://") for p in paths):
        out.update(cache_dir=data.get("cache_dir") or "$TMPDIR/arrowtrain-cache (default)",
                   cache_limit=data.get("cache_limit"))
    return out


REMOTE_STATUS_S = 5.0  # how long status tries the store for the remote `latest` (--remote-timeout)


def remote_checkpoint(run_dir: Path, timeout_s: float = REMOTE_STATUS_S) -> dict[str, Any] | None:
    """checkpoint.remote of the run (RUNDIR/config.yaml): the tag and step its remote `latest`
    names, or why it could not be read within `timeout_s` (never an exception: status works
    without the store)."""
    try:
        url = yaml.safe_load((run_dir / "config.yaml").read_text())["checkpoint"]["remote"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    if not isinstance(url, str):
        return None
    from data_tools.remote import RemoteError, S3Path, shared_remote
    from pretrain.train.remote_ckpt import read_remote_latest

    try:
        tag = read_remote_latest(shared_remote(), S3Path.parse(url), timeout_s)
    except RemoteError as e:
        return {"url": url, "tag": None, "step": None, "error": str(e), "timeout_s": timeout_s}
    return {"url": url, "tag": tag, "step": tag_step(tag) if tag else None, "error": None,
            "timeout_s": timeout_s}


def _remote_text(remote: dict[str, Any]) -> str:
    if remote["error"]:
        return (f"remote checkpoint: {remote['url']}: latest unknown, the store did not "
                f"answer within {remote['timeout_s']:g} s ({remote['error']})")
    if remote["tag"] is None:
        return f"remote checkpoint: {remote['url']}: none yet (no `latest` there)"
    return f"remote checkpoint: {remote['url']}: latest {remote['tag']} (step {remote['step']})"


def eta_seconds(run_dir: Path, rows: list[dict[str, Any]]) -> float | None:
    steps = [(_int(r["step"]), _float(r["step_time_ms"])) for r in rows
             if "step_time_ms" in r and "step" in r]
    steps = [(s, ms) for s, ms in steps if s is not None and ms is not None]
    max_steps = max_steps_of(run_dir)
    if not steps or max_steps is None:
        return None
    step_ms = statistics.median(ms for _, ms in steps[-RECENT_STEPS:])
    return max(0, max_steps - steps[-1][0]) * step_ms / 1000


def checkpoint_info(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint the same command would resume from (the trainer's own choice,
    checkpoint_meta.find_resume_tag: `latest`, or the newest complete one when `latest` is not
    to be trusted), with its step, rank count and layout; None when there is none."""
    ckpt_dir = run_dir / "checkpoints"
    tag = find_resume_tag(ckpt_dir)
    meta = read_meta(ckpt_dir / tag) if tag else None
    if meta is None:
        return None
    return {"tag": tag, "step": meta.step, "world_size": meta.world_size,
            "layout": checkpoint_layout(ckpt_dir / tag, meta),
            "latest_not_followed": resume_order(ckpt_dir)[1]}


def lock_info(run_dir: Path) -> dict[str, Any] | None:
    """The run lock's holder, whether it can still be running, and if not why (`blocks`: a
    run.lock that is no lock file, which every start refuses until it is removed)."""
    path = run_dir / runlock.LOCK_NAME
    if path.exists() and not path.is_file():
        return {"holder": None, "alive": False, "describe": "not a lock file",
                "stale": runlock.not_a_lock_message(path), "blocks": True}
    try:
        rec, mtime = runlock._read(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return {"holder": None, "alive": False, "stale": f"unreadable ({e})",
                "describe": "a lock that cannot be read"}
    age = time.time() - mtime
    lease = runlock._env_float("ARROWTRAIN_LOCK_LEASE_S",
                                6 * runlock._env_float("ARROWTRAIN_LOCK_HEARTBEAT_S", 10.0))
    why = runlock.stale_reason(rec, mtime, lease)
    return {"holder": rec, "heartbeat_age_s": age, "alive": why is None, "stale": why,
            "describe": runlock.describe(rec, age) if rec else f"an empty lock, {age:.0f} s old"}


def resume_setting(run_dir: Path) -> str:
    """`resume` of the run as it last started (RUNDIR/config.yaml): auto, or never."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        value = cfg.get("resume", "auto") if isinstance(cfg, dict) else "auto"
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "auto"
    return "never" if value == "never" else "auto"


def next_start(ckpt: dict[str, Any] | None, resume: str = "auto") -> str:
    """What the same command does next, as the trainer decides it (`resume`, then
    checkpoint_meta.find_resume_tag)."""
    if resume == "never":
        return ("the same command starts over at step 0 (resume: never in its config.yaml), "
                "writing over the checkpoints" + (f" ({ckpt['tag']} …)" if ckpt else ""))
    if ckpt:
        return f"the same command resumes from {ckpt['tag']}"
    return "the same command starts at step 0 (no complete checkpoint to resume from)"


def run_state(lock: dict[str, Any] | None, events: list[dict[str, Any]],
              ckpt: dict[str, Any] | None, max_steps: int | None,
              resume: str = "auto") -> tuple[str, str]:
    """(state, why): running | finished | stopped | failed | not started (module docstring)."""
    if lock and lock["alive"]:
        return "running", f"the run lock is held: {lock['describe']}"
    resumable = ("resumable: " if ckpt and resume != "never" else "") + next_start(ckpt, resume)
    last = events[-1] if events else None
    if last and last["event"] == "exit":
        code = _int(last.get("code", 1))
        if code is None:
            return "failed", (f"its last exit record holds no exit code ({last.get('code')!r}: "
                              f"{RUN_EVENTS} is damaged){'; ' + resumable if ckpt else ''}")
        at = f"at step {last.get('step', '?')}"
        if code == EXIT_OK:
            return "finished", f"exited 0 {at}"
        if code == EXIT_RESUME:
            return "stopped", f"stopped on request {at} (exit 75); {resumable}"
        err = f": {last['error']}" if last.get("error") else ""
        return "failed", (f"exited {code} ({describe_exit(code)}) {at}{err}; after a fix, "
                          f"{next_start(ckpt, resume)}")
    if last and last["event"] == "start":
        why = "ended without recording its exit (killed: kill -9, out of memory, a lost node?)"
        return ("stopped", f"{why}; {resumable}") if ckpt else ("failed", why)
    if ckpt and max_steps is not None and ckpt["step"] == max_steps:
        return "finished", f"the last checkpoint is at train.max_steps ({max_steps})"
    if ckpt:
        return "stopped", resumable
    return "not started", "no run events, no checkpoint"


def collect(run_dir: Path, remote_timeout_s: float = REMOTE_STATUS_S) -> dict[str, Any]:
    slurm_dir = run_dir / "slurm"
    info: dict[str, Any] = {"run_dir": str(run_dir)}
    jobs = (slurm_dir / JOBS_FILE).read_text().split() if (slurm_dir / JOBS_FILE).is_file() else []
    if jobs:
        job_id = jobs[-1]
        events = [e for e in read_jsonl(slurm_dir / EVENTS_FILE) if str(e.get("job_id")) == job_id]
        info["job"] = {"id": job_id, **job_state(job_id),
                       "restarts": max((_int(e.get("restart")) or 0 for e in events), default=0),
                       "last_event": events[-1] if events else None}
        if events and events[-1].get("event") == "failed":
            rc = _int(events[-1].get("rc"))
            info["job"]["why"] = f"training exited with code {rc} ({describe_exit(rc)})" \
                if rc is not None else f"training failed (exit code {events[-1].get('rc')!r})"
            info["job"]["log"] = failure_reason(slurm_dir, job_id)
    ckpt = checkpoint_info(run_dir)
    info["checkpoint"] = ckpt["tag"] if ckpt else None
    info["checkpoint_world_size"] = ckpt["world_size"] if ckpt else None
    if ckpt:
        info["checkpoint_layout"] = ckpt["layout"]
        info["checkpoint_note"] = ckpt["latest_not_followed"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if "loss" in r and _int(r.get("step")) is not None]
    val = [r for r in rows if "val_loss" in r]
    info["last_metrics"] = rows[-1] if rows else None
    info["last_train"] = train[-1] if train else None
    info["last_val"] = val[-1] if val else None
    info["memory"] = memory_info(rows)
    info["max_steps"] = max_steps_of(run_dir)
    info["data"] = data_location(run_dir)
    info["remote_checkpoint"] = remote_checkpoint(run_dir, remote_timeout_s)
    known = [_int(train[-1]["step"])] if train else []
    known += [ckpt["step"]] if ckpt else []
    info["step"] = max(known, default=None)
    info["lock"] = lock_info(run_dir)
    events = read_events(run_dir)
    info["restarts_recorded"] = sum(1 for e in events if e["event"] == "start") - 1 \
        if events else 0
    info["resume"] = resume_setting(run_dir)
    info["state"], info["why"] = run_state(info["lock"], events, ckpt, info["max_steps"],
                                           info["resume"])
    info["eta_s"] = None if info["state"] == "finished" else eta_seconds(run_dir, rows)
    return info


SHOWN = ("loss", "lr", "grad_norm", "tokens_per_sec", "step_time_ms", "data_wait_ms",
         "cache_hit_rate")


def memory_info(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's measured peak per rank next to `arrowtrain plan`'s figure (the trainer logs
    both in metrics.jsonl: pretrain/train/memcheck.py), from the last row that has them."""
    for row in reversed(rows):
        planned, peak = _int(row.get("memory_planned_bytes")), _int(row.get("memory_peak_bytes"))
        if planned is not None or peak is not None:  # a damaged value counts as not measured
            return {"planned_bytes": planned, "peak_bytes": peak}
    return None


def _memory_text(mem: dict[str, Any]) -> str:
    gib = lambda n: f"{n / 2**30:.3f} GiB" if n is not None else "not measured yet"  # noqa: E731
    text = f"memory per rank: peak {gib(mem['peak_bytes'])}, planned {gib(mem['planned_bytes'])}"
    if mem["peak_bytes"] and mem["planned_bytes"]:
        text += f" (measured/planned {mem['peak_bytes'] / mem['planned_bytes']:.2f})"
    return text


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _metrics_line(row: dict[str, Any], keys) -> str:
    parts = [f"{k} {_number(row[k])}" for k in keys if row.get(k) is not None]
    return f"step {row.get('step', '?')}: " + ", ".join(parts)


def _format_job(job: dict[str, Any]) -> list[str]:
    extra = job.get("reason") or job.get("exit_code") or ""
    out = [f"job {job['id']}: {job['state']} ({job['source']}) {extra}".rstrip(),
           f"restarts: {job['restarts']}"]
    if job.get("last_event"):
        e = job["last_event"]
        out.append(f"last event: {e.get('event', '?')} at {e.get('time', '?')} "
                   f"(rc {e.get('rc', '?')})")
    if job.get("why"):
        out.append(f"why: {job['why']}")
        out += [f"  | {line}" for line in job.get("log", [])]
    return out


def _layout_text(layout: dict[str, Any] | None) -> str:
    """' (written by 2 ranks at ZeRO-2; resumes on any number of ranks)'."""
    if not layout:
        return ""
    n = layout["ranks"]
    copy = "; universal copy beside it" if layout["universal_copy"] else \
        "; a stale universal copy beside it (of an earlier writing of this step: converted " \
        "again if needed)" if layout.get("stale_universal_copy") else ""
    return (f" (written by {n} rank{'s' if n != 1 else ''} at ZeRO-{layout['zero_stage']}; "
            f"resumes on any number of ranks{copy})")


def _data_text(data: dict[str, Any]) -> str:
    text = "data: " + ", ".join(str(p) for p in data["paths"])
    if "cache_dir" in data:
        limit = data["cache_limit"]
        text += (f" (object storage; node cache {data['cache_dir']}, limit "
                 f"{human_bytes(limit) if limit else 'half of the free space'})")
    return text


def _format(info: dict[str, Any]) -> str:
    out = [f"run folder: {info['run_dir']}", f"state: {info['state']} ({info['why']})"]
    lock = info.get("lock")
    if lock and lock.get("blocks"):
        out.append(f"damaged lock: {lock['stale']}")
    elif lock and not lock["alive"]:
        out.append(f"stale lock: {lock.get('describe', '?')} ({lock['stale']}; "
                   "the next start takes it over)")
    step, max_steps = info["step"], info["max_steps"]
    if step is not None or max_steps is not None:
        out.append(f"progress: step {step if step is not None else 0} of "
                   f"{max_steps if max_steps is not None else '?'}")
    if info.get("data"):
        out.append(_data_text(info["data"]))
    if info.get("job"):
        out += _format_job(info["job"])
    ckpt = info["checkpoint"]
    out.append(f"last complete checkpoint: {ckpt or 'none'}"
               f"{_layout_text(info.get('checkpoint_layout'))}")
    if info.get("remote_checkpoint"):
        out.append(_remote_text(info["remote_checkpoint"]))
    if info.get("checkpoint_note"):
        out.append(f"note: {info['checkpoint_note']}; the trainer resumes from the newest "
                   "complete checkpoint")
    if info["last_train"]:
        out.append(f"last metrics: {_metrics_line(info['last_train'], SHOWN)}")
    if info["last_val"]:
        out.append(f"last validation: {_metrics_line(info['last_val'], ('val_loss', 'val_ppl'))}")
    if not info["last_train"] and not info["last_val"]:
        out.append("last metrics: none")
    if info.get("memory"):
        out.append(_memory_text(info["memory"]))
    eta = info["eta_s"]
    if info["state"] == "finished":
        out.append("ETA: done")
    else:
        what = "ETA" if info["state"] == "running" else "time left when resumed"
        out.append(f"{what}: {human_duration(eta)}" if eta is not None else f"{what}: unknown")
    return "\n".join(out)


def run_status(run_dir: str, as_json: bool = False, remote_timeout_s: float | None = None) -> int:
    path = Path(run_dir)
    if not path.is_dir():
        print(f"error: RUNDIR {run_dir}: no such folder", file=sys.stderr)
        return EXIT_CONFIG
    if remote_timeout_s is None:
        remote_timeout_s = REMOTE_STATUS_S
    elif not remote_timeout_s > 0:
        print(f"error: --remote-timeout: must be > 0 seconds, got {remote_timeout_s:g}",
              file=sys.stderr)
        return EXIT_CONFIG
    info = collect(path.resolve(), remote_timeout_s)
    print(json.dumps(info) if as_json else _format(info))
    return EXIT_OK
