"""Rank-0 metrics: RUNDIR/metrics.jsonl and the same rows to W&B (offline by default).

One history across restarts. The W&B run id lives in RUNDIR/wandb_run_id; every start opens
that id with `resume="allow"` (online: the same run continues; offline: one more segment folder
`wandb/offline-run-*-<id>` whose run record asks for resuming, and `wandb sync` uploads the
segments of one id in start order into one run). Each row goes to W&B at `step=` the global
step, so W&B's `_step` is the training step in every segment. A restart redoes the steps after
its checkpoint; the rows of those steps that W&B already holds are not sent again (their values
are the same: resume is exact), so no step appears twice: RUNDIR/wandb/logged_through_step
keeps the highest step ever sent. W&B's files and caches stay inside the run folder; its config
is the resolved run config, which holds no secrets (keys come only from the environment)."""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.atomic import write_atomic
from pretrain.train.config import WandbConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_ID_FILE = "wandb_run_id"
LOGGED_THROUGH_FILE = "wandb/logged_through_step"  # highest step ever sent to W&B


def last_step(path: Path) -> int:
    """The highest step in metrics.jsonl (0 if none; lines cut short by a kill are skipped)."""
    if not path.is_file():
        return 0
    steps = [_row_step(line) for line in path.read_text(errors="replace").splitlines()]
    return int(max((s for s in steps if s is not None and math.isfinite(s)), default=0))


def _row_step(line: str) -> float | None:
    """A row's step (0 when it has none), or None for a line that is no metrics row: cut short
    by a kill, or damaged (a bare number, a list, a step that is no number)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else None


@dataclass(frozen=True)
class MetricRows:
    """What a metrics.jsonl holds: its rows, and the lines that are none (1-based numbers: a
    line cut short by a kill, or damage)."""

    rows: list[dict[str, Any]]
    bad_lines: list[int]


def read_rows(path: Path) -> MetricRows:
    """Every row of a metrics.jsonl (torch-free: `arrowtrain plot` and `runs compare` read it).
    Raises OSError when the file cannot be read."""
    rows, bad = [], []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return MetricRows(rows, bad)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be redone), and
    lines that are no metrics rows (named in a warning)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    steps = [_row_step(line) for line in rows]
    keep = [line for line, step in zip(rows, steps) if step is not None and step <= last_step]
    damaged = [i + 1 for i, step in enumerate(steps) if step is None]
    if damaged:
        log.warning("%s: dropping %d line(s) that are no metrics rows (line %s%s: cut short by "
                    "a kill, or damaged)", path, len(damaged), ", ".join(map(str, damaged[:5])),
                    " …" if len(damaged) > 5 else "")
    if len(keep) != len(rows):
        write_atomic(path, "".join(k + "\n" for k in keep))


def wandb_run_id(run_dir: Path) -> str:
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    write_atomic(path, run_id + "\n")
    return run_id


class Metrics:
    """Write rows on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, wandb_cfg: WandbConfig,
                 config: dict[str, Any], resumed_step: int):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.wandb_run = None
        self.wandb_sent_through = 0  # rows up to this step are in W&B already
        id_file = run_dir / RUN_ID_FILE
        self.run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not enabled:
            return
        if wandb_cfg.mode != "disabled":
            self.wandb_sent_through = self._mark_sent_through(run_dir)  # before truncating
        truncate_metrics(self.path, resumed_step)
        if wandb_cfg.mode != "disabled":
            self.wandb_run = self._start_wandb(run_dir, wandb_cfg, config)
            self.run_id = self.wandb_run.id
            if self.wandb_sent_through > resumed_step:
                log.info("W&B already holds steps %d-%d of run %s; they are redone from the "
                         "checkpoint but not sent again", resumed_step + 1,
                         self.wandb_sent_through, self.run_id)

    def _mark_sent_through(self, run_dir: Path) -> int:
        """The highest step any earlier start sent to W&B: what metrics.jsonl held before this
        start truncates it, or more (a start that died before its first checkpoint)."""
        mark = run_dir / LOGGED_THROUGH_FILE
        try:
            stored = int(mark.read_text()) if mark.is_file() else 0
        except ValueError:
            stored = 0
        through = max(stored, last_step(self.path))
        if through > stored:
            mark.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(mark, f"{through}\n")
        return through

    @staticmethod
    def _start_wandb(run_dir: Path, cfg: WandbConfig, config: dict[str, Any]):
        import wandb

        wdir = run_dir / "wandb"
        wdir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
            os.environ[var] = str(run_dir / "wandb" / sub if sub else run_dir)
        # "allow", also online: "must" would turn a run missing on the server (deleted, or all
        # earlier segments offline) into a crash loop of the training job.
        run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name, tags=cfg.tags,
                         group=cfg.group, id=wandb_run_id(run_dir), resume="allow",
                         mode=cfg.mode, dir=str(run_dir), config=config)
        run.define_metric("train/step")
        run.define_metric("*", step_metric="train/step")
        return run

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        step = row.get("step")
        if self.wandb_run is not None and (step is None or step > self.wandb_sent_through):
            self.wandb_run.log({("train/step" if k == "step" else k): v
                                for k, v in row.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
