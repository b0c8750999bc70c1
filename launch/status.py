"""`python -m launch status RUNDIR`: where a run stands.

Reads only the run folder and Slurm's own tools: the job id from RUNDIR/slurm/jobs, its state
from `squeue` (running/pending) or the job-completion record (`sacct -c`, no database needed),
the batch script's events (start / requeue / finished / failed with exit code), the last complete
checkpoint (RUNDIR/checkpoints/latest) with the rank count and ZeRO stage it was written with (its
meta.json), the last metrics line and an ETA from recent step times.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from launch.common import describe_exit
from launch.slurm import EVENTS_FILE, JOBS_FILE

RECENT_STEPS = 20  # ETA from the median step time of the last rows


def _tool(*cmd: str) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
    return rows


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


def checkpoint_layout(tag_dir: Path) -> dict[str, Any]:
    """How the checkpoint was written (its meta.json): ranks, ZeRO stage, and whether a
    re-sharded universal copy (`TAG_universal`, pretrain/train/reshard.py) is beside it."""
    try:
        meta = json.loads((tag_dir / "meta.json").read_text())
        out = {"ranks": int(meta["world_size"]),
               "zero_stage": int(meta["config"]["deepspeed"]["zero_stage"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out["universal_copy"] = (tag_dir.parent / f"{tag_dir.name}_universal" / "meta.json").is_file()
    return out


def eta_seconds(run_dir: Path, rows: list[dict[str, Any]]) -> float | None:
    steps = [r for r in rows if "step_time_ms" in r and "step" in r]
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        max_steps = int(cfg["train"]["max_steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None
    if not steps:
        return None
    step_ms = statistics.median(r["step_time_ms"] for r in steps[-RECENT_STEPS:])
    return max(0, max_steps - int(steps[-1]["step"])) * step_ms / 1000


def collect(run_dir: Path) -> dict[str, Any]:
    slurm_dir = run_dir / "slurm"
    info: dict[str, Any] = {"run_dir": str(run_dir)}
    jobs = (slurm_dir / JOBS_FILE).read_text().split() if (slurm_dir / JOBS_FILE).is_file() else []
    if jobs:
        job_id = jobs[-1]
        events = [e for e in _read_jsonl(slurm_dir / EVENTS_FILE) if str(e.get("job_id")) == job_id]
        info["job"] = {"id": job_id, **job_state(job_id),
                       "restarts": max((int(e["restart"]) for e in events), default=0),
                       "last_event": events[-1] if events else None}
        if events and events[-1].get("event") == "failed":
            rc = int(events[-1]["rc"])
            info["job"]["why"] = f"training exited with code {rc} ({describe_exit(rc)})"
            info["job"]["log"] = failure_reason(slurm_dir, job_id)
    latest = run_dir / "checkpoints" / "latest"
    info["checkpoint"] = latest.read_text().strip() if latest.is_file() else None
    if info["checkpoint"]:
        info["checkpoint_layout"] = checkpoint_layout(latest.parent / info["checkpoint"])
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    info["last_metrics"] = rows[-1] if rows else None
    info["eta_s"] = eta_seconds(run_dir, rows)
    return info


def _layout_text(layout: dict[str, Any] | None) -> str:
    """' (written by 2 ranks at ZeRO-2; resumes on any number of ranks)'."""
    if not layout:
        return ""
    n = layout["ranks"]
    copy = "; universal copy beside it" if layout["universal_copy"] else ""
    return (f" (written by {n} rank{'s' if n != 1 else ''} at ZeRO-{layout['zero_stage']}; "
            f"resumes on any number of ranks{copy})")


def _format(info: dict[str, Any]) -> str:
    out = [f"run folder: {info['run_dir']}"]
    job = info.get("job")
    if job:
        extra = job.get("reason") or job.get("exit_code") or ""
        out.append(f"job {job['id']}: {job['state']} ({job['source']}) {extra}".rstrip())
        out.append(f"restarts: {job['restarts']}")
        if job.get("last_event"):
            e = job["last_event"]
            out.append(f"last event: {e['event']} at {e['time']} (rc {e['rc']})")
        if job.get("why"):
            out.append(f"why: {job['why']}")
            out += [f"  | {line}" for line in job.get("log", [])]
    else:
        out.append("job: none submitted from this run folder (no slurm/jobs)")
    out.append(f"last complete checkpoint: {info['checkpoint'] or 'none'}"
               f"{_layout_text(info.get('checkpoint_layout'))}")
    out.append(f"last metrics: {json.dumps(info['last_metrics']) if info['last_metrics'] else 'none'}")
    eta = info["eta_s"]
    out.append(f"ETA: {eta / 60:.1f} min" if eta is not None else "ETA: unknown")
    return "\n".join(out)


def run_status(run_dir: str, as_json: bool = False) -> int:
    path = Path(run_dir)
    if not path.is_dir():
        print(f"error: RUNDIR {run_dir}: no such folder", file=sys.stderr)
        return 2
    info = collect(path.resolve())
    print(json.dumps(info) if as_json else _format(info))
    return 0
