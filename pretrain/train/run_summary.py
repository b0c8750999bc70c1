"""What a run folder records, summed up for comparing runs (`arrowtrain runs compare`): the
final train and validation metrics, tokens trained, wall time, training speed, and the resolved
config as flat dotted keys. Reads RUNDIR/metrics.jsonl, run_events.jsonl and config.yaml only:
torch-free and fast. A damaged or missing file is a note (the summary keeps what the other
files give); a folder with none of them is a RunReadError.

- tokens: as the trainer counts them for tokens/s (`input_ids` of every rank, padding
  included), summed over the logged rows: tokens_per_sec × step_time_ms × the steps since the
  previous row.
- tokens_per_sec: those tokens over the step time they took (start-up, evaluation and
  checkpoint saves excluded).
- wall_seconds: from each `start` in run_events.jsonl to its `exit`, summed over restarts; a
  start without an exit (killed, or still running) counts up to its last metrics row."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pretrain.configlib import parse_yaml
from pretrain.train.events import EVENTS_FILE, read_events
from pretrain.train.metrics import METRICS_FILE, read_rows

CONFIG_FILE = "config.yaml"
FINAL_KEYS = ("loss", "val_loss", "val_bpb", "val_bleu")  # the last logged value of each


class RunReadError(ValueError):
    """A run folder with nothing to read: the message names the folder."""


@dataclass
class RunSummary:
    run_dir: Path
    step: int | None = None  # the last training step logged
    max_steps: int | None = None  # train.max_steps of config.yaml
    final: dict[str, float] = field(default_factory=dict)  # FINAL_KEYS that were logged
    tokens: int | None = None
    train_seconds: float | None = None  # the step time the tokens took
    wall_seconds: float | None = None
    config: dict[str, Any] | None = None  # flat dotted keys; None: no readable config.yaml
    notes: list[str] = field(default_factory=list)  # damaged or missing files

    @property
    def tokens_per_sec(self) -> float | None:
        if not self.tokens or not self.train_seconds:
            return None
        return self.tokens / self.train_seconds


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; lists and scalars are values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _speed(rows: list[dict[str, Any]]) -> tuple[int | None, float | None]:
    """(tokens, step seconds) summed over the training rows (module docstring)."""
    tokens, seconds, prev = 0.0, 0.0, 0
    counted = False
    for r in rows:
        if not (_finite(r.get("tokens_per_sec")) and _finite(r.get("step_time_ms"))):
            continue
        steps = r["step"] - prev if r["step"] > prev else r["step"]  # steps started over
        prev = r["step"]
        step_s = r["step_time_ms"] / 1000 * steps
        tokens, seconds, counted = tokens + r["tokens_per_sec"] * step_s, seconds + step_s, True
    return (round(tokens), seconds) if counted else (None, None)


def _wall_seconds(events: list[dict[str, Any]], rows: list[dict[str, Any]]) -> float | None:
    """Start to exit of every start, summed (module docstring)."""
    starts = [i for i, e in enumerate(events) if e["event"] == "start" and _finite(e.get("time"))]
    if not starts:
        return None
    total = 0.0
    for i in starts:
        t0 = events[i]["time"]
        after = events[i + 1] if i + 1 < len(events) else None
        if after is not None and after["event"] == "exit" and _finite(after.get("time")):
            total += after["time"] - t0
            continue
        end = after["time"] if after is not None and _finite(after.get("time")) else math.inf
        seen = [r["time"] for r in rows if _finite(r.get("time")) and t0 <= r["time"] <= end]
        total += max(seen, default=t0) - t0
    return total


def _read_metrics(run_dir: Path, summary: RunSummary) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        summary.notes.append(f"{path}: no such file (the run logged no step yet)")
        return []
    try:
        got = read_rows(path)
    except OSError as e:
        summary.notes.append(f"{path}: cannot be read ({e.strerror or e})")
        return []
    if got.bad_lines:
        shown = ", ".join(map(str, got.bad_lines[:5])) + (", ..." if len(got.bad_lines) > 5
                                                          else "")
        summary.notes.append(f"{path}: {len(got.bad_lines)} line(s) are not a JSON row "
                             f"(line {shown}; cut short by a kill?): skipped")
    return [r for r in got.rows if _finite(r.get("step"))]


def _read_config(run_dir: Path, summary: RunSummary) -> None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        summary.notes.append(f"{path}: no such file (the run never started): no config keys")
        return
    try:
        data = parse_yaml(path.read_text(errors="replace"))
    except OSError as e:
        summary.notes.append(f"{path}: cannot be read ({e.strerror or e}): no config keys")
        return
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        summary.notes.append(f"{path}: not valid YAML{where}: no config keys")
        return
    if not isinstance(data, dict):
        summary.notes.append(f"{path}: not a mapping of config keys: no config keys")
        return
    summary.config = flatten(data)
    steps = summary.config.get("train.max_steps")
    summary.max_steps = steps if isinstance(steps, int) else None


def summarize(run_dir: str | Path) -> RunSummary:
    """The summary of one run folder; RunReadError when it holds nothing to summarise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunReadError(f"{run_dir}: no such run folder")
    if not any((run_dir / f).is_file() for f in (METRICS_FILE, EVENTS_FILE, CONFIG_FILE)):
        raise RunReadError(f"{run_dir}: not a run folder (no {METRICS_FILE}, {EVENTS_FILE} or "
                           f"{CONFIG_FILE})")
    summary = RunSummary(run_dir)
    rows = _read_metrics(run_dir, summary)
    _read_config(run_dir, summary)
    train = [r for r in rows if _finite(r.get("loss"))]
    summary.step = int(train[-1]["step"]) if train else None
    for key in FINAL_KEYS:
        values = [r[key] for r in rows if _finite(r.get(key))]
        if values:
            summary.final[key] = float(values[-1])
    summary.tokens, summary.train_seconds = _speed(train)
    summary.wall_seconds = _wall_seconds(read_events(run_dir), rows)
    return summary


def differing_keys(configs: list[dict[str, Any] | None]) -> list[str]:
    """The dotted keys whose values are not the same in every readable config (a key one config
    lacks differs too); run_dir, which always differs, is left out."""
    known = [c for c in configs if c is not None]
    keys = sorted({k for c in known for k in c} - {"run_dir"})
    missing = object()
    return [k for k in keys if len({repr(c.get(k, missing)) for c in known}) > 1]
