"""A run's checkpoint folder as files, without torch: the typed `meta.json` record
(`CheckpointMeta`), tag names, and which checkpoint a start with `resume: auto` resumes from.

The trainer (pretrain/train/checkpoint.py, which adds the sha256 check of every file, the RNG
files and DeepSpeed), export and `launch status` all read checkpoints through this module, so
status says what the trainer will do:

    RUNDIR/checkpoints/latest                  the tag of the newest complete checkpoint
    RUNDIR/checkpoints/step_00001000/meta.json CheckpointMeta, written last by rank 0
    RUNDIR/checkpoints/step_00001000_universal the re-sharded copy (pretrain/train/reshard.py)
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

LATEST = "latest"
META = "meta.json"
TAG_RE = re.compile(r"^step_(\d{8,})$")
UNIVERSAL_SUFFIX = "_universal"  # step_N_universal: step_N re-sharded (pretrain/train/reshard.py)
META_FORMAT = 2  # 1: files as {name: size}; 2: {name: {bytes, sha256}}


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def tag_step(tag: str) -> int | None:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


# ---- meta.json ---------------------------------------------------------------------------

class FileRecord(BaseModel):
    bytes: int = Field(ge=0)
    sha256: str | None = None  # None only in checkpoints written before hashes were recorded


class DataFolderRecord(BaseModel):
    path: str
    weight: float
    fingerprint: str


class CheckpointMeta(BaseModel):
    """The typed contract of `step_N/meta.json` (design §4), built in `Trainer.save`, read by
    the resume check, export, sample and `launch status`. Unknown keys are ignored (newer
    writers)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    format_version: int = 1
    step: int = Field(ge=0)
    consumed_samples: int = Field(ge=0)
    data_fingerprint: str
    data_folders: list[DataFolderRecord] = Field(default_factory=list)
    param_shapes: dict[str, list[int]]
    world_size: int = Field(ge=1)
    config: dict[str, Any]  # the resolved run config (config.yaml's content)
    wandb_run_id: str | None = None
    files: dict[str, FileRecord] = Field(default_factory=dict)
    # A universal checkpoint (pretrain/train/reshard.py): the tag it was converted from and
    # the sha256 of that tag's meta.json at the time (a step_N written again since differs).
    converted_from: str | None = None
    source_meta_sha256: str | None = None

    @field_validator("files", mode="before")
    @classmethod
    def _sizes_only(cls, v: Any) -> Any:  # format 1: {name: size}
        if isinstance(v, dict):
            return {k: {"bytes": x} if isinstance(x, int) else x for k, x in v.items()}
        return v

    @field_validator("files")
    @classmethod
    def _inside_the_folder(cls, v: dict[str, FileRecord]) -> dict[str, FileRecord]:
        """Names are relative paths inside the checkpoint folder: a meta.json from elsewhere
        (a remote copy, a folder copied in) must not make a download or a check touch
        `../../.bashrc` or `/etc/passwd`."""
        for name in v:
            parts = name.split("/")
            if (not name or name.startswith("/") or "\\" in name or ".." in parts
                    or "" in parts or any(ord(c) < 32 for c in name)):
                raise ValueError(f"file name {name!r} is not a path inside the checkpoint folder")
        return v

    @property
    def zero_stage(self) -> int:
        return int(self.config["deepspeed"]["zero_stage"])

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def client_state(self) -> dict[str, Any]:
        return self.model_dump(mode="json",
                               exclude={"files", "converted_from", "source_meta_sha256"})


def meta_problem(tag_dir: Path) -> tuple[CheckpointMeta | None, str | None]:
    """(meta, None), or (None, why meta.json cannot be used)."""
    path = tag_dir / META
    try:
        return CheckpointMeta.model_validate_json(path.read_bytes()), None
    except FileNotFoundError:
        return None, f"{path} is missing (the save did not finish)"
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror})"
    except ValidationError as e:
        return None, f"{path} is not a valid checkpoint record ({e.error_count()} problems)"


def read_meta(tag_dir: Path) -> CheckpointMeta | None:
    return meta_problem(tag_dir)[0]


def meta_sha256(tag_dir: Path) -> str | None:
    """sha256 of the checkpoint's meta.json (None when unreadable): what ties a universal copy
    to the one writing of `step_N` it was converted from."""
    try:
        return hashlib.sha256((tag_dir / META).read_bytes()).hexdigest()
    except OSError:
        return None


def universal_copy_state(ckpt_dir: Path, tag: str) -> str:
    """"none", "current" (converted from this very step_N) or "stale" (from an earlier writing
    of step_N, or from a version that did not record which: reshard.convert converts again)."""
    copy = read_meta(ckpt_dir / (tag + UNIVERSAL_SUFFIX))
    if copy is None:
        return "none"
    source = meta_sha256(ckpt_dir / tag)
    return "current" if source is not None and copy.source_meta_sha256 == source else "stale"


def size_problems(tag_dir: Path, meta: CheckpointMeta) -> list[tuple[str, str]]:
    out = []
    for rel, rec in meta.files.items():
        f = tag_dir / rel
        if not f.is_file():
            out.append((rel, "missing"))
        elif f.stat().st_size != rec.bytes:
            out.append((rel, f"{f.stat().st_size} bytes, meta.json says {rec.bytes}"))
    return out


def is_complete(tag_dir: Path) -> bool:
    """meta.json is there and every file it lists has its recorded size (cheap: no hashing)."""
    meta = read_meta(tag_dir)
    return meta is not None and not size_problems(tag_dir, meta)


# ---- checkpoints waiting for their upload (checkpoint.remote, pretrain/train/remote_ckpt.py) --

UPLOAD_PINS = ".uploading"  # checkpoints/.uploading/TAG.rankR: rank R still uploads TAG


def pinned_tags(ckpt_dir: Path) -> set[str]:
    """Tags some rank still uploads: pruning keeps them (the local copy goes only once the
    remote one is complete)."""
    pins = ckpt_dir / UPLOAD_PINS
    if not pins.is_dir():
        return set()
    return {p.name.rsplit(".rank", 1)[0] for p in pins.iterdir() if ".rank" in p.name}


# ---- which checkpoint a run resumes from ---------------------------------------------------

def list_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags in the folder, oldest first (by step number, not by string)."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name)]
    return sorted(tags, key=tag_step)


def resume_order(ckpt_dir: Path) -> tuple[list[str], str | None]:
    """(tags to try, best first; why `latest` is not followed, or None when it is).
    Best first: the tag `latest` names, then the older ones newest first. A `latest` that is
    missing, empty or names no folder is not trusted: every step_* folder is a candidate, newest
    (by step number) first."""
    tags = list_tags(ckpt_dir)
    latest = ckpt_dir / LATEST
    try:
        named = latest.read_text().strip()
    except FileNotFoundError:
        named, why = None, f"{latest} is missing"
    except (OSError, UnicodeDecodeError) as e:
        named, why = None, f"{latest} cannot be read ({e})"
    else:
        why = f"{latest} is empty" if not named else f"{latest} names {named!r}, which is not there"
    if named in tags:
        return [named] + [t for t in reversed(tags) if tag_step(t) < tag_step(named)], None
    return list(reversed(tags)), (why if tags else None)


def resume_candidates(ckpt_dir: Path) -> list[str]:
    """resume_order's tags; a warning says why when `latest` is not followed."""
    tags, why = resume_order(ckpt_dir)
    if why:
        log.warning("%s; looking for the newest complete checkpoint among %s … %s",
                    why, tags[-1], tags[0])
    return tags


def find_resume_tag(ckpt_dir: Path) -> str | None:
    """The checkpoint a start with `resume: auto` resumes from, as far as sizes tell: the first
    candidate whose files are all there with their recorded sizes. (The trainer also checks each
    file's sha256 and falls back past a damaged one, pretrain/train/checkpoint.py.)"""
    for tag in resume_order(ckpt_dir)[0]:
        if is_complete(ckpt_dir / tag):
            return tag
    return None
