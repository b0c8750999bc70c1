"""Rank-0 metrics: RUNDIR/metrics.jsonl and the same rows to W&B (offline by default).

The W&B run id lives in RUNDIR/wandb_run_id so every restart continues the same run; W&B's
files and caches stay inside the run folder; its config is the resolved run config, which holds
no secrets (keys come only from the environment)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from pretrain.train.checkpoint import write_atomic
from pretrain.train.config import WandbConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_ID_FILE = "wandb_run_id"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be redone)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for line in rows:
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except ValueError:  # a line cut short by a kill
            continue
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
        id_file = run_dir / RUN_ID_FILE
        self.run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not enabled:
            return
        truncate_metrics(self.path, resumed_step)
        if wandb_cfg.mode != "disabled":
            self.wandb_run = self._start_wandb(run_dir, wandb_cfg, config)
            self.run_id = self.wandb_run.id

    @staticmethod
    def _start_wandb(run_dir: Path, cfg: WandbConfig, config: dict[str, Any]):
        import wandb

        wdir = run_dir / "wandb"
        wdir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
            os.environ[var] = str(run_dir / "wandb" / sub if sub else run_dir)
        run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name, tags=cfg.tags,
                         id=wandb_run_id(run_dir), resume="allow", mode=cfg.mode,
                         dir=str(run_dir), config=config)
        run.define_metric("train/step")
        run.define_metric("*", step_metric="train/step")
        return run

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({("train/step" if k == "step" else k): v
                                for k, v in row.items() if v is not None})

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
