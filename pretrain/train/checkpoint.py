"""Atomic checkpoints in RUNDIR/checkpoints (docs/design.md §4).

A checkpoint `step_00001000/` holds DeepSpeed's files, one RNG file per rank (`rng_rank{r}.pt`:
python, numpy and torch generators — DeepSpeed's client state would give every rank rank 0's)
and `meta.json` (step, samples, fingerprint, parameter shapes, the file list with sizes) written by
rank 0 once every rank has finished. `latest` names the newest complete checkpoint and is written
after that, via temp file + rename, so a kill at any moment leaves the previous one in force.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

LATEST = "latest"
META = "meta.json"
CLIENT_KEY = "arrowtrain"
TAG_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for this run (the message names the difference)."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def write_atomic(path: Path, text: str) -> None:
    from data_tools.atomic import write_atomic as one_helper  # temp + fsync + rename
    one_helper(path, text)


# ---- RNG state, per rank -----------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                  "gauss": np_state["gauss"]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- finding a checkpoint ----------------------------------------------------------------

def read_meta(tag_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tag_dir / META).read_text())
    except (OSError, ValueError):
        return None


def is_complete(tag_dir: Path) -> bool:
    """Every file rank 0 listed after the save barrier is there with its size."""
    meta = read_meta(tag_dir)
    if meta is None:
        return False
    for rel, size in meta["files"].items():
        f = tag_dir / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
    return True


def list_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags in the folder, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name))


def find_resume_tag(ckpt_dir: Path) -> str | None:
    """The tag in `latest` if complete; else the newest complete older one; else None."""
    latest = ckpt_dir / LATEST
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    if is_complete(ckpt_dir / tag):
        return tag
    older = [t for t in list_tags(ckpt_dir) if t < tag and is_complete(ckpt_dir / t)]
    log.warning("checkpoint %s named in %s is incomplete; falling back to %s",
                tag, latest, older[-1] if older else "a fresh start")
    return older[-1] if older else None


# ---- compatibility ------------------------------------------------------------------------

def param_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Parameter shapes as built (before ZeRO-3 partitions them)."""
    return {n: list(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}


def _partition_problems(meta: dict[str, Any], world_size: int, zero_stage: int) -> list[str]:
    """ZeRO >= 1 splits the optimizer state between the ranks that saved it, and DeepSpeed
    cannot re-split it on load: such a checkpoint resumes only on the same ranks and stage."""
    old_stage = meta["config"]["deepspeed"]["zero_stage"]
    if old_stage != zero_stage and max(old_stage, zero_stage) >= 1:
        return [f"deepspeed.zero_stage: checkpoint {old_stage}, config {zero_stage} "
                "(the optimizer state is laid out per stage)"]
    if zero_stage >= 1 and meta["world_size"] != world_size:
        return [f"ranks: checkpoint written by {meta['world_size']} ranks at ZeRO-{zero_stage}, "
                f"this run has {world_size} (ZeRO's optimizer state is split between the ranks "
                f"that saved it; resume on {meta['world_size']} ranks, or use ZeRO-0 to change "
                "the number of ranks — the data position carries over at the same global batch)"]
    return []


def check_compatible(meta: dict[str, Any], shapes: dict[str, list[int]], fingerprint: str,
                     tag_dir: Path, world_size: int, zero_stage: int) -> None:
    """Refuse a checkpoint whose model shape, data fingerprint or (with ZeRO >= 1) rank layout
    differs; name the difference."""
    problems = _partition_problems(meta, world_size, zero_stage)
    old = meta["param_shapes"]
    for name in sorted(set(old) | set(shapes)):
        a, b = old.get(name), shapes.get(name)
        if a != b:
            problems.append(f"parameter {name}: checkpoint {a}, config {b}")
    if len(problems) > 5:
        problems = problems[:5] + [f"... and {len(problems) - 5} more parameters"]
    if meta["data_fingerprint"] != fingerprint:
        problems.append(f"data fingerprint: checkpoint {meta['data_fingerprint'][:16]}…, "
                        f"data {fingerprint[:16]}…")
    if problems:
        raise CheckpointError(f"cannot resume from {tag_dir}: the run changed:\n  - "
                              + "\n  - ".join(problems)
                              + "\nUse a new run_dir (or resume=never) to start over.")


# ---- save / load --------------------------------------------------------------------------

def save(engine, ckpt_dir: Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Collective: every rank calls it at the same step."""
    rank = dist.get_rank()
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0:  # a stale meta.json from an interrupted earlier save must not vouch for this one
        (tag_dir / META).unlink(missing_ok=True)
    # Our client state under one key: DeepSpeed merges it into its own top-level dict.
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={CLIENT_KEY: meta},
                           save_latest=False)
    rng_file = tag_dir / f"rng_rank{rank}.pt"
    tmp = rng_file.with_name(rng_file.name + ".tmp")
    torch.save(rng_state(), tmp)
    os.replace(tmp, rng_file)
    dist.barrier()
    if rank == 0:
        files = {str(p.relative_to(tag_dir)): p.stat().st_size
                 for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != META}
        write_atomic(tag_dir / META, json.dumps({**meta, "files": files}, indent=1))
        write_atomic(ckpt_dir / LATEST, tag + "\n")
        prune(ckpt_dir, keep_last, keep=tag)
    dist.barrier()
    return tag_dir


def prune(ckpt_dir: Path, keep_last: int, keep: str) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (and stale partial ones)."""
    tags = list_tags(ckpt_dir)
    complete = [t for t in tags if is_complete(ckpt_dir / t)]
    kept = set(complete[-keep_last:]) | {keep}
    for t in tags:
        if t not in kept and t < keep:
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)


def load(engine, ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Load model/optimizer/scheduler and this rank's RNG; return the client state."""
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        log.warning("no RNG state for this rank in %s (world size changed?)", rng_file.parent)
    return client[CLIENT_KEY]
