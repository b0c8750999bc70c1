"""Checkpoints that do not stop training (`checkpoint.async`; docs/training.md).

At a save step every rank runs DeepSpeed's `save_checkpoint` as usual, but the checkpoint
engine's `save` only *stages* each file: its tensor storages are copied into a host arena (a
memfd, reused by every save) and the rest of the object is pickled with references into the
arena. That copy is all the training loop waits for (`checkpoint_blocking_ms`). The rank's
writer process (ckpt_writer.py, forked from the rank at its start) then writes the files
(temp, fsync, rename, sha256), and a commit thread per rank waits for its writer and meets the
other ranks' commit threads over a separate gloo group: when every writer is done, rank 0 writes meta.json, then `latest`, then
prunes — exactly the synchronous commit (checkpoint.py), so `latest` never names an unfinished
checkpoint (`checkpoint_write_ms`: save step to commit). A failure anywhere removes the partial
folder and leaves `latest` alone; the ranks learn of it at the next sync step and stop
(CheckpointSaveError), as after a failed synchronous save.

The trainer waits for the write in flight before the next save, on a stop request, at the last
step, and when it closes after an error. Collectives of the training group stay on the main
thread; the commit threads use only their own group.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pretrain.train import checkpoint as ckpt
from pretrain.train.checkpoint_meta import CheckpointMeta, FileRecord, tag_for
from pretrain.train.ckpt_writer import Writer

log = logging.getLogger(__name__)

ALIGN = 64
PAGE = mmap.PAGESIZE


class Arena:
    """Host memory a checkpoint is staged in: a memfd the writer maps too, grown when a save
    needs more and reused by the next (one staged copy of this rank's share)."""

    def __init__(self, reserve_bytes: int = 0):
        self.fd = os.memfd_create("arrowtrain-checkpoint")
        self.size, self.used, self.map = 0, 0, None
        if reserve_bytes:  # the expected share and a margin (arena_bytes), its pages
            self._grow(arena_bytes(reserve_bytes), populate=True)

    def reset(self) -> None:
        self.used = 0

    def stage(self, storage: torch.UntypedStorage) -> tuple[int, int]:
        """Copy a storage (any device) into the arena; returns (offset, bytes)."""
        nbytes, offset = storage.nbytes(), self.used
        if offset + nbytes > self.size:
            self._grow(offset + nbytes)
        self.used = -(-(offset + nbytes) // ALIGN) * ALIGN
        if nbytes:
            src = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            dst = torch.frombuffer(self.map, dtype=torch.uint8, count=nbytes, offset=offset)
            dst.copy_(src)
        return offset, nbytes

    def _grow(self, need: int, populate: bool = False) -> None:
        """Touched now (at start) or page by page as the staging copy writes them (a save
        that outgrew the reserve: touching it all here would hold the loop longer)."""
        size = -(-max(need, self.size + self.size // 4) // PAGE) * PAGE
        os.ftruncate(self.fd, size)
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        self.map, self.size = mmap.mmap(self.fd, size, flags=flags), size  # old views die

    def close(self) -> None:
        os.close(self.fd)


def arena_bytes(share_bytes: int) -> int:
    """What an arena reserves for a rank's expected share of a checkpoint: +6% (the estimate
    is within 3%) and 16 MiB (nothing for an empty share)."""
    return share_bytes + share_bytes // 16 + (16 << 20) if share_bytes else 0


class _StagingPickler(pickle.Pickler):
    """Pickles one file's object with every tensor storage staged into the arena (each storage
    once: views keep sharing it, as in torch.save)."""

    def __init__(self, file, arena: Arena):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arena, self.seen = arena, {}

    def persistent_id(self, obj):
        if isinstance(obj, torch.storage.TypedStorage):
            kind, untyped, dtype = "typed", obj._untyped_storage, str(obj.dtype)[6:]
        elif isinstance(obj, torch.UntypedStorage):
            kind, untyped, dtype = "untyped", obj, None
        else:
            return None
        key = (str(untyped.device), untyped.data_ptr(), untyped.nbytes())
        if key not in self.seen:
            self.seen[key] = self.arena.stage(untyped)
        return (kind, *self.seen[key], dtype)


def stage_payload(obj: Any, arena: Arena) -> bytes:
    import io

    buf = io.BytesIO()
    _StagingPickler(buf, arena).dump(obj)
    return buf.getvalue()


@dataclass
class Outcome:
    """A save as it ended (the same on every rank): `error` is the message every rank raises."""

    step: int
    tag_dir: Path
    blocking_ms: float
    write_ms: float = 0.0
    error: str | None = None
    total_bytes: int | None = None


@dataclass
class _InFlight:
    meta: CheckpointMeta
    tag_dir: Path
    t0: float
    outcome: Outcome
    stage_error: dict[str, Any] | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class _Stager(ckpt.EngineSavePatch):
    """Replaces DeepSpeed's checkpoint engine `save` for one checkpoint: each file is staged
    and sent to the writer; a failure is recorded so DeepSpeed still meets its barriers."""

    def __init__(self, engine, saver: AsyncCheckpointer, tag_dir: Path):
        super().__init__(engine, tag_dir)
        self.saver = saver
        self.zipfile = getattr(self.ce, "zipfile_serialization", True)

    def _save(self, state_dict, path, *args, **kwargs) -> None:
        if self.error is not None:
            return
        try:
            self.saver.send_file(Path(path), self.tag_dir, state_dict, self.zipfile)
        except Exception as e:  # noqa: BLE001 - reported collectively by the commit threads
            self.error = (str(path), e)


class AsyncCheckpointer:
    """One rank's staging arena, writer process and commit thread (one save in flight). The
    writer was forked at the rank's start (ckpt_writer.fork_writer); it gets the arena here."""

    def __init__(self, group, keep_last: int, writer: Writer, reserve_bytes: int = 0):
        self.group, self.keep_last = group, keep_last
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.arena = Arena(reserve_bytes)
        self.writer = writer
        writer.attach(self.arena.fd)
        self.inflight: _InFlight | None = None

    def send_file(self, path: Path, tag_dir: Path, obj: Any, zipfile: bool) -> None:
        payload = stage_payload(obj, self.arena)
        self.writer.send({"op": "file", "path": str(path), "rel": str(path.relative_to(tag_dir)),
                          "payload": payload, "zipfile": zipfile})

    def start(self, engine, ckpt_dir: Path, meta: CheckpointMeta, estimate: int | None
              ) -> Outcome:
        """Collective (training group, main thread): stage this rank's files and hand them to
        the writer; returns (the save's outcome, filled in by the commit thread) once the state
        is copied. The caller has waited for the save before."""
        assert self.inflight is None, "wait() for the save in flight first"
        t0 = time.perf_counter()
        tag_dir = ckpt_dir / tag_for(meta.step)
        if self.rank == 0 and tag_dir.exists():  # left by an interrupted save
            ckpt.remove_partial(tag_dir)
        self.arena.reset()
        with _Stager(engine, self, tag_dir) as stager:
            try:
                engine.save_checkpoint(str(ckpt_dir), tag=tag_dir.name,
                                       client_state={ckpt.CLIENT_KEY: meta.client_state()},
                                       save_latest=False)
            except Exception as e:  # noqa: BLE001 - outside a file: meet its closing barrier
                stager.error = stager.error or (str(ckpt_dir), e)
                dist.barrier()
        if stager.error is None:
            rng = tag_dir / f"rng_rank{self.rank}.pt"
            stager._save(ckpt.rng_state(), str(rng))
        error = None if stager.error is None else ckpt._describe(stager.error, tag_dir)
        self.writer.send({"op": "end", "tag": tag_dir.name})
        outcome = Outcome(meta.step, tag_dir, blocking_ms=(time.perf_counter() - t0) * 1e3)
        self.inflight = _InFlight(meta, tag_dir, t0, outcome, error)
        self.inflight.thread = threading.Thread(
            target=self._commit, args=(self.inflight, estimate), daemon=True,
            name=f"checkpoint-commit-{meta.step}")
        self.inflight.thread.start()
        return outcome

    def _commit(self, job: _InFlight, estimate: int | None) -> None:
        """Commit thread: this rank's writer done → all ranks' findings (own gloo group) →
        rank 0 commits or removes the partial folder → every rank gets the same outcome."""
        try:
            answer = self.writer.answer()
            error = answer["error"] if (answer["error"] or {}).get("writer_died") else \
                job.stage_error or answer["error"]
            shares = [None] * self.world
            dist.all_gather_object(shares, (error, answer["files"]), group=self.group)
            result = [self._decide(job, shares, estimate) if self.rank == 0 else None]
            dist.broadcast_object_list(result, src=0, group=self.group)
            job.outcome.error, job.outcome.total_bytes = result[0]
        except Exception as e:  # noqa: BLE001 - a rank died, or the group broke
            job.outcome.error = (f"the background save of step {job.meta.step} to {job.tag_dir} "
                                 f"did not finish: {type(e).__name__}: {e}. `latest` was not "
                                 "moved; run the same command to resume from it.")
        job.outcome.write_ms = (time.perf_counter() - job.t0) * 1e3

    def _decide(self, job: _InFlight, shares: list, estimate: int | None
                ) -> tuple[str | None, int | None]:
        """Rank 0: (None, bytes) once committed, or (the failure message, None)."""
        ckpt_dir = job.tag_dir.parent
        errors = [(r, e) for r, (e, _) in enumerate(shares) if e is not None]
        if not errors:
            files = {k: FileRecord.model_validate(v) for _, f in shares for k, v in f.items()}
            errors = ckpt._finish(ckpt_dir, job.tag_dir, job.meta, files, self.keep_last)
            if not errors:
                return None, sum(f.bytes for f in files.values())
        ckpt.remove_partial(job.tag_dir)
        return ckpt.failure_text(errors, ckpt_dir, job.tag_dir, job.meta.step, estimate), None

    def failed(self) -> bool:
        """This rank already knows that the save in flight failed (for the sync vector)."""
        job = self.inflight
        return job is not None and not job.thread.is_alive() and job.outcome.error is not None

    def finished(self) -> Outcome | None:
        """The save in flight if it ended well (then it is no longer in flight), else None."""
        job = self.inflight
        if job is None or job.thread.is_alive() or job.outcome.error is not None:
            return None
        self.inflight = None
        return job.outcome

    def wait(self) -> Outcome | None:
        """Block until the save in flight has committed or failed (None: nothing in flight)."""
        job, self.inflight = self.inflight, None
        if job is None:
            return None
        job.thread.join()
        return job.outcome

    def close(self) -> Outcome | None:
        """Wait for the save in flight, then stop the writer and free the arena."""
        try:
            return self.wait()
        finally:
            self.writer.close()
            self.arena.close()


def available_ram_bytes() -> int | None:
    """This host's MemAvailable in bytes (None where there is no /proc/meminfo)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text()
                      .splitlines())
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None  # not Linux: nothing to check against


def host_ram_problem(need_bytes: int, available: int | None = None) -> str | None:
    """The pre-flight for checkpoint.async: the host must hold one staged copy of this node's
    share of a checkpoint besides what it holds now (MemAvailable; None: read it here)."""
    if available is None:
        available = available_ram_bytes()
    if available is None or available >= need_bytes:
        return None
    return (f"checkpoint.async needs ≈ {ckpt.human_bytes(need_bytes)} of host RAM on this node "
            f"for one staged copy of its ranks' share of a checkpoint, but only "
            f"{ckpt.human_bytes(available)} is available: set checkpoint.async=false (saves then "
            "stop training while they write) or free host memory")


# checkpoint.async=auto saves in the background only from this share of a checkpoint on a
# rank. A background save keeps a staged copy in host RAM for the run (the writer itself is
# forked from the rank and starts in milliseconds). A synchronous save holds every rank for
# about share ÷ write speed at every save: ≈ 360 MB/s measured on a 2-core EPYC (1.99 GB in
# 5.5 s, gpt2-124m, into the page cache; async held that run 0.43 s), ≈ 100 MB/s to a network
# filesystem; for 256 MiB that is 0.75-2.7 s a save. Below it a save holds the loop for less
# than a second, not worth the RAM.
AUTO_MIN_SHARE_BYTES = 256 << 20


class AsyncRefused(Exception):
    """checkpoint.async=true where a node's host RAM cannot hold its staging arenas."""


def ram_shortfall(ranks: list[tuple[str, int, int | None]]) -> tuple[str, int, int] | None:
    """The first node whose MemAvailable (its first rank's figure) cannot hold its ranks'
    arenas, as (host, bytes the arenas need, bytes available); ranks: (host, share, avail)."""
    need: dict[str, int] = {}
    available: dict[str, int | None] = {}
    for host, share, free in ranks:
        need[host] = need.get(host, 0) + arena_bytes(share)
        available.setdefault(host, free)
    for host, n in need.items():
        if available[host] is not None and available[host] < n:
            return host, n, available[host]
    return None


def choose_async(setting: bool | str, ranks: list[tuple[str, int, int | None]]
                 ) -> tuple[bool, str]:
    """checkpoint.async resolved from every rank's (host, share of a checkpoint in bytes
    (node_share_bytes), MemAvailable in bytes or None): the same on every rank that has the
    same list. Returns (background?, the INFO line saying which and why); raises AsyncRefused
    (the pre-flight's message) for `true` where a node's RAM is short."""
    if setting is False:
        return False, "checkpoints: synchronous (checkpoint.async=false)"
    short = ram_shortfall(ranks)
    if setting is True:
        if short:
            raise AsyncRefused(host_ram_problem(short[1], short[2]))
        return True, "checkpoints: in the background (checkpoint.async=true)"
    largest = max((share for _, share, _ in ranks), default=0)
    size, limit = ckpt.human_bytes(largest), f"{AUTO_MIN_SHARE_BYTES >> 20} MiB"
    if largest < AUTO_MIN_SHARE_BYTES:
        return False, (f"checkpoints: synchronous (checkpoint.async=auto: a rank saves at most "
                       f"{size}, below {limit})")
    if short:
        host, need, available = short
        return False, (f"checkpoints: synchronous (checkpoint.async=auto: host RAM on {host} "
                       f"has {ckpt.human_bytes(available)} available, the staging arenas "
                       f"need ≈ {ckpt.human_bytes(need)})")
    return True, (f"checkpoints: in the background (checkpoint.async=auto: a rank saves up to "
                  f"{size}, at least {limit}, and host RAM holds the staging arenas)")


def node_share_bytes(ckpt_bytes: int, zero_stage: int, local_ranks: list[int], world: int,
                     weights_bytes: int) -> int:
    """Bytes this node's ranks stage: ZeRO >= 1 splits the optimizer state over the ranks
    and rank 0 adds the full weights; at ZeRO-0 rank 0 saves everything."""
    if zero_stage == 0:
        return ckpt_bytes if 0 in local_ranks else 0
    share = ckpt_bytes * len(local_ranks) // world
    return min(ckpt_bytes, share + (weights_bytes if 0 in local_ranks else 0))
