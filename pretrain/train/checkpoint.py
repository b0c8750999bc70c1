"""Atomic, verified checkpoints in RUNDIR/checkpoints (docs/design.md §4, §10).

A checkpoint `step_00001000/` holds DeepSpeed's files, one RNG file per rank (`rng_rank{r}.pt`:
python, numpy and torch generators — DeepSpeed's client state would give every rank rank 0's)
and `meta.json` (a `CheckpointMeta`: step, samples, data, parameter shapes, resolved config and
every file with its size and sha256) written by rank 0 once every rank has finished. Each rank
hashes the files it wrote right after writing them (from the page cache). `latest` names the
newest complete checkpoint and is written after that, via temp file + rename, so a kill at any
moment leaves the previous one in force.

Before loading, every file is checked against `meta.json` (size, sha256) and unpickled
weights-only (`safeload`); a damaged checkpoint is skipped for the previous complete one, a
tampered one (a pickle that refers to code) stops the run naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel

from data_tools.atomic import write_atomic
from pretrain.train.checkpoint_meta import (
    LATEST,
    META,
    META_FORMAT,
    UNIVERSAL_SUFFIX,
    CheckpointMeta,
    FileRecord,
    is_complete,
    list_tags,
    meta_problem,
    pinned_tags,
    resume_candidates,
    tag_for,
    tag_step,
)
from pretrain.train.safeload import UnsafeCheckpointFile, probe, weights_only_loading

log = logging.getLogger(__name__)

CLIENT_KEY = "arrowtrain"
HASH = "sha256"  # with SHA-NI (x86 since ~2017, ARMv8 crypto) ~2x faster than blake2b


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for this run (the message names the difference).
    `all_ranks`: every rank raises the same error, so only rank 0 needs to report it."""

    all_ranks = False


class CheckpointSaveError(RuntimeError):
    """Saving a checkpoint failed on some rank; the partial folder was removed and `latest`
    still names the previous checkpoint. Raised on every rank."""

    all_ranks = True


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


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, step, rank): what a rank uses instead of a saved
    RNG state that does not exist for it (a resume on another number of ranks)."""
    digest = hashlib.sha256(f"arrowtrain:{seed}:{step}:{rank}".encode()).digest()
    value = int.from_bytes(digest[:8], "little")
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


# ---- finding a checkpoint ----------------------------------------------------------------

def choose_resume(ckpt_dir: Path) -> tuple[str, CheckpointMeta] | None:
    """Collective: the checkpoint every rank resumes from (rank 0 lists the candidates, all ranks
    verify their own files), or None for a fresh start."""
    rank, world = dist.get_rank(), dist.get_world_size()
    candidates = [resume_candidates(ckpt_dir) if rank == 0 else None]
    dist.broadcast_object_list(candidates, src=0)

    def gather(x: Any) -> list[Any]:
        out = [None] * world
        dist.all_gather_object(out, x)
        return out

    return choose_checkpoint(ckpt_dir, candidates[0], rank, world, gather)


# ---- compatibility ------------------------------------------------------------------------

def param_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Parameter shapes as built (before ZeRO-3 partitions them)."""
    return {n: list(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}


# ---- integrity ------------------------------------------------------------------------------

def file_hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()


def file_record(path: Path) -> FileRecord:
    return FileRecord(bytes=path.stat().st_size, sha256=file_hash(path))


_OWNER = re.compile(r"(?:^|_)(?:pp_rank_|rng_rank)(\d+)[_.]")


def owner_rank(rel: str, world: int) -> int:
    """The rank that writes (and loads) a file: `zero_pp_rank_R_...` and `rng_rankR.pt` are
    rank R's, the rest rank 0's — so the hash reads hit that rank's page cache."""
    m = _OWNER.search(Path(rel).name)
    return int(m.group(1)) % world if m else 0


class FileProblem(BaseModel):
    file: str
    reason: str
    unsafe: bool = False  # tampered: refuse, do not fall back


def check_files(tag_dir: Path, meta: CheckpointMeta, names: Iterable[str]) -> list[FileProblem]:
    """Size, sha256 and a weights-only unpickle (tensor data not read) of each named file."""
    problems = []
    for rel in names:
        path, rec = tag_dir / rel, meta.files.get(rel)
        try:
            if rec is None:
                problems.append(FileProblem(file=rel, reason="not listed in meta.json"))
                continue
            size = path.stat().st_size
            if size != rec.bytes:
                reason = f"{size} bytes, meta.json says {rec.bytes}"
            elif rec.sha256 is not None and file_hash(path) != rec.sha256:
                reason = f"its {HASH} differs from meta.json's (damaged on disk or in transfer)"
            else:
                reason = None
                if path.suffix == ".pt":
                    probe(path)
        except UnsafeCheckpointFile as e:
            problems.append(FileProblem(file=rel, reason=e.reason, unsafe=True))
            continue
        except FileNotFoundError:
            reason = "missing"
        except Exception as e:  # noqa: BLE001 - any failure to read it back is damage
            reason = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        if reason:
            problems.append(FileProblem(file=rel, reason=reason))
    return problems


def verify_share(tag_dir: Path, rank: int, world: int) -> tuple[CheckpointMeta | None,
                                                                  list[FileProblem]]:
    """This rank's part of checking a checkpoint: meta.json, and the files it owns."""
    meta, why = meta_problem(tag_dir)
    if meta is None:
        return None, [FileProblem(file=META, reason=why)]
    present = {str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*")
               if p.is_file() and p.name != META}
    names = sorted(present | set(meta.files))
    mine = [n for n in names if owner_rank(n, world) == rank]
    return meta, check_files(tag_dir, meta, mine)


def choose_checkpoint(ckpt_dir: Path, candidates: list[str], rank: int = 0, world: int = 1,
                      gather: Callable[[Any], list[Any]] | None = None,
                      none_left: str = "a fresh start at step 0",
                      ) -> tuple[str, CheckpointMeta] | None:
    """The first candidate that verifies, checked by all ranks together (each hashes the files
    it owns; `gather` all-gathers the findings, so every rank decides alike). A damaged one is
    skipped with a warning naming the file and the reason; a tampered one raises."""
    gather = gather or (lambda x: [x])
    for i, tag in enumerate(candidates):
        meta, problems = verify_share(ckpt_dir / tag, rank, world)
        problems = [p for share in gather([p.model_dump() for p in problems]) for p in share]
        problems = [FileProblem.model_validate(p) for p in problems]
        unsafe = [p for p in problems if p.unsafe]
        if unsafe:
            err = CheckpointError(
                "refusing to load checkpoint " + str(ckpt_dir / tag) + ":\n"
                + "\n".join(f"  - {ckpt_dir / tag / p.file}: {p.reason}" for p in unsafe)
                + "\nNothing was loaded or changed. Inspect the file; to resume from an older "
                "checkpoint, move this folder out of the way.")
            err.all_ranks = True
            raise err
        if not problems:
            return tag, meta
        if rank == 0:
            nxt = candidates[i + 1] if i + 1 < len(candidates) else none_left
            log.warning("checkpoint %s is incomplete or damaged, falling back to %s:\n%s",
                        ckpt_dir / tag, nxt,
                        "\n".join(f"  - {p.file}: {p.reason}" for p in problems))
    return None


# ---- disk space -----------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def estimate_bytes(n_params: int, precision: str, zero_stage: int) -> int:
    """A checkpoint's size from the parameter count: the weights in the training precision plus
    Adam's two fp32 moments, plus fp32 master weights where DeepSpeed keeps them (ZeRO >= 1 or
    16-bit training). Measured on gpt-tiny: within 3% at every stage and precision."""
    weights = 2 if precision in ("bf16", "fp16") else 4
    masters = 4 if (zero_stage >= 1 or weights == 2) else 0
    return n_params * (weights + 8 + masters)


def warn_low_space(ckpt_dir: Path, estimate: int, source: str) -> None:
    """Warn when the free space would not hold two more checkpoints (the next one is written
    before the oldest is pruned)."""
    free = free_bytes(ckpt_dir)
    if free < 2 * estimate:
        log.warning("only %s free for %s; a checkpoint is ≈ %s (%s): the next saves may run out "
                    "of space", human_bytes(free), ckpt_dir, human_bytes(estimate), source)


def _disk_full(err: BaseException, directory: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(err):
        return True
    # torch's zip writer reports "file write failed" without errno: look at the disk itself.
    return free_bytes(directory) < 64 * 2**20


# ---- save -------------------------------------------------------------------------------------

class EngineSavePatch:
    """For one checkpoint, DeepSpeed's checkpoint engine `save` is replaced by `self._save`
    (a context manager: the engine's own method is back on exit, even after an error)."""

    def __init__(self, engine, tag_dir: Path):
        self.ce, self.tag_dir = engine.checkpoint_engine, tag_dir
        self.error: tuple[str, BaseException] | None = None

    def __enter__(self):
        self._had_attr = "save" in vars(self.ce)
        self._orig = self.ce.save
        self.ce.save = self._save
        return self

    def __exit__(self, *exc):
        if self._had_attr:
            self.ce.save = self._orig
        else:
            del self.ce.save

    def _save(self, state_dict, path, *args, **kwargs):
        raise NotImplementedError


class _RecordSaves(EngineSavePatch):
    """Wraps DeepSpeed's checkpoint engine `save` for one checkpoint: hashes each file right
    after it is written, and turns a failed write into a recorded error so that DeepSpeed
    still reaches its closing barrier on this rank (no rank is left waiting)."""

    def __init__(self, engine, tag_dir: Path):
        super().__init__(engine, tag_dir)
        self.files: dict[str, FileRecord] = {}

    def _save(self, state_dict, path, *args, **kwargs):
        if self.error is not None:
            return None
        try:
            out = self._orig(state_dict, path, *args, **kwargs)
            self.record(Path(path))
            return out
        except Exception as e:  # noqa: BLE001 - reported collectively after the barrier
            self.error = (str(path), e)
            return None

    def record(self, path: Path) -> None:
        self.files[str(path.relative_to(self.tag_dir))] = file_record(path)


def _write_rng(rec: _RecordSaves, rank: int) -> None:
    rng_file = rec.tag_dir / f"rng_rank{rank}.pt"
    tmp = rng_file.with_name(rng_file.name + ".tmp")
    try:
        torch.save(rng_state(), tmp)
        os.replace(tmp, rng_file)
    finally:
        tmp.unlink(missing_ok=True)
    rec.record(rng_file)


def save(engine, ckpt_dir: Path, meta: CheckpointMeta, keep_last: int,
         estimate: int | None = None) -> Path:
    """Collective: every rank calls it at the same step. Raises CheckpointSaveError on every
    rank if any rank failed (the partial folder is removed, `latest` is left as it was)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tag = tag_for(meta.step)
    tag_dir = ckpt_dir / tag
    if rank == 0:
        # A universal copy of an earlier step_N (another lineage: a run started over, a
        # rollback) must never outlive the step_N written now.
        drop_universal_copies(ckpt_dir, [tag])
        if tag_dir.exists():  # left by an interrupted save, or a damaged one we fell back
            shutil.rmtree(tag_dir)  # from: none of its files may mix with this save's
    with _RecordSaves(engine, tag_dir) as rec:
        try:  # our client state under one key: DeepSpeed merges it into its own top-level dict
            engine.save_checkpoint(str(ckpt_dir), tag=tag,
                                   client_state={CLIENT_KEY: meta.client_state()},
                                   save_latest=False)
        except Exception as e:  # noqa: BLE001 - outside a file write: meet its closing barrier
            rec.error = rec.error or (str(ckpt_dir), e)
            dist.barrier()
    if rec.error is None:
        try:
            _write_rng(rec, rank)
        except Exception as e:  # noqa: BLE001
            rec.error = (str(tag_dir / f"rng_rank{rank}.pt"), e)
    error = None if rec.error is None else _describe(rec.error, tag_dir)
    shares = [None] * world
    dist.all_gather_object(shares, (error, rec.files))
    errors = [(r, e) for r, (e, _) in enumerate(shares) if e is not None]
    if not errors and rank == 0:
        files = {k: v for _, f in shares for k, v in f.items()}
        errors = _finish(ckpt_dir, tag_dir, meta, files, keep_last)
    result = [errors]
    dist.broadcast_object_list(result, src=0)
    if result[0]:
        raise CheckpointSaveError(_failure_message(result[0], ckpt_dir, tag_dir, meta.step,
                                                   estimate, rank))
    return tag_dir


def _describe(error: tuple[str, BaseException], tag_dir: Path) -> dict[str, Any]:
    path, exc = error
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return {"file": path, "error": f"{type(exc).__name__}: {text}",
            "disk_full": _disk_full(exc, tag_dir)}


def _finish(ckpt_dir: Path, tag_dir: Path, meta: CheckpointMeta, files: dict[str, FileRecord],
            keep_last: int) -> list[tuple[int, dict]]:
    """Rank 0, after every rank wrote and hashed its files: meta.json, then `latest`, then
    prune. Returns the failures ([] on success)."""
    try:
        present = sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != META)
        for p in present:  # anything DeepSpeed wrote outside its checkpoint engine
            rel = str(p.relative_to(tag_dir))
            if rel not in files:
                files[rel] = file_record(p)
        record = meta.model_copy(update={"format_version": META_FORMAT,
                                         "files": dict(sorted(files.items()))})
        write_atomic(tag_dir / META, record.model_dump_json(indent=1))
        write_atomic(ckpt_dir / LATEST, tag_dir.name + "\n")
    except Exception as e:  # noqa: BLE001
        return [(0, _describe((str(tag_dir), e), tag_dir))]
    prune(ckpt_dir, keep_last, keep=tag_dir.name)
    return []


def _failure_message(errors: list[tuple[int, dict]], ckpt_dir: Path, tag_dir: Path, step: int,
                     estimate: int | None, rank: int) -> str:
    if rank == 0:  # nothing of this save may remain; `latest` was not touched
        remove_partial(tag_dir)
    dist.barrier()
    return failure_text(errors, ckpt_dir, tag_dir, step, estimate)


def remove_partial(tag_dir: Path) -> None:
    """Rank 0, after a failed save: the folder goes, meta.json first."""
    (tag_dir / META).unlink(missing_ok=True)
    shutil.rmtree(tag_dir, ignore_errors=True)


def failure_text(errors: list[tuple[int, dict]], ckpt_dir: Path, tag_dir: Path, step: int,
                 estimate: int | None) -> str:
    """What a failed save says (after its partial folder was removed): the first failure, or
    the full disk with the sizes, and the checkpoint `latest` still names."""
    latest = ckpt_dir / LATEST
    kept = latest.read_text().strip() if latest.is_file() else "nothing (no checkpoint yet)"
    r, err = errors[0]
    if any(e["disk_full"] for _, e in errors):
        size = f"≈ {human_bytes(estimate)}" if estimate else "of unknown size"
        head = (f"no space left on device while saving step {step} to {tag_dir} "
                f"(a checkpoint is {size}, {human_bytes(free_bytes(ckpt_dir))} free)")
        hint = "Free some space (or lower checkpoint.keep_last) and run"
    else:
        head = f"saving step {step} to {tag_dir} failed on rank {r}: {err['file']}: {err['error']}"
        hint = "Run" if err.get("writer_died") else \
            "Free some space (or lower checkpoint.keep_last) and run"
    return (f"{head}. The partial folder was removed; {latest} still names {kept}. {hint} the "
            "same command to resume.")


def drop_universal_copies(ckpt_dir: Path, tags: Iterable[str] | None = None) -> list[Path]:
    """Remove the universal copy (`TAG_universal`, reshard.py) of each of `tags`, or of every
    checkpoint when None (a run that starts over); the folders removed."""
    names = [t + UNIVERSAL_SUFFIX for t in tags] if tags is not None else \
        [p.name for p in ckpt_dir.glob(f"step_*{UNIVERSAL_SUFFIX}")] if ckpt_dir.is_dir() else []
    removed = []
    for name in names:
        path = ckpt_dir / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def prune(ckpt_dir: Path, keep_last: int, keep: str) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (and stale partial ones)
    older than `keep`, each with its universal copy (`step_N_universal`, reshard.py); never
    one whose upload (checkpoint.remote) is still in flight."""
    tags = list_tags(ckpt_dir)
    complete = [t for t in tags if is_complete(ckpt_dir / t)]
    kept = set(complete[-keep_last:]) | {keep} | pinned_tags(ckpt_dir)  # uploads in flight
    for t in tags:
        if t not in kept and tag_step(t) < tag_step(keep):
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)
    for p in ckpt_dir.glob(f"step_*{UNIVERSAL_SUFFIX}"):
        if not (ckpt_dir / p.name.removesuffix(UNIVERSAL_SUFFIX)).is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ---- load -------------------------------------------------------------------------------------

def load(engine, ckpt_dir: Path, tag: str, restore_rng: bool = True,
         rng_tag: str | None = None) -> dict[str, Any]:
    """Load model/optimizer/scheduler (every torch.load weights-only, even DeepSpeed's own) and,
    with `restore_rng`, this rank's RNG state (from `rng_tag`, default `tag`); return the client
    state. `tag` may name a universal checkpoint (the engine must then have been built with
    load_universal; it holds no RNG files: pass the original as `rng_tag`)."""
    rng_file = ckpt_dir / (rng_tag or tag) / f"rng_rank{dist.get_rank()}.pt"
    try:
        with weights_only_loading():
            path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
            rng = torch.load(rng_file, map_location="cpu", weights_only=True) \
                if restore_rng and rng_file.is_file() else None
    except UnsafeCheckpointFile as e:  # verified before: only if a file changed since
        raise CheckpointError(f"refusing to resume: {e}") from None
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    if rng is not None:
        set_rng_state(rng)
    elif restore_rng:
        log.warning("no RNG state for this rank in %s", rng_file.parent)
    return client[CLIENT_KEY]


