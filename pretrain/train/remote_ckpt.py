"""Checkpoint copies in object storage: `checkpoint.remote: s3://BUCKET/PREFIX` (docs/training.md,
"Remote copies").

    s3://BUCKET/PREFIX/step_00001000/...          the checkpoint's files, as in the run folder
    s3://BUCKET/PREFIX/step_00001000/.ranks/rankR.json   rank R's files uploaded, with sha256
    s3://BUCKET/PREFIX/step_00001000/meta.json    written by rank 0 once every file is there
    s3://BUCKET/PREFIX/latest                     the newest complete copy, written after it

**Upload.** Every committed checkpoint (sync or async: `Trainer._settle`) is queued on each
rank's upload thread. Each rank uploads the files it owns (`checkpoint.owner_rank`: the files it
wrote, so a node without a shared filesystem has them), hashing the bytes as they go, then a
marker listing them. Rank 0 waits for every rank's marker, checks every file of its local
`meta.json` against them (size and sha256) and the remote listing, then uploads `meta.json`, then
`latest`, then prunes the remote copies to `checkpoint.keep_last`. No collective is involved
(ranks may reach this at different steps); the store itself is the meeting point.

A thread, not a process: the work is network transfers and sha256 of file chunks, which release
the GIL (pyarrow's S3 writes, file reads, hashlib on buffers > 2 KiB); the trainer's writer process
(ckpt_writer.py) is what holds CPU for serialising. Every request is retried through outages
(data_tools.remote: connection errors, timeouts, 5xx, with backoff) for
`checkpoint.remote_timeout`; training never waits for it. While a rank's upload of a checkpoint
is queued or in flight, `checkpoints/.uploading/TAG.rankR` pins it: pruning keeps the local copy
until the remote one is complete (or its upload gave up, with a warning). A stop and the end of
the run wait for the uploads (bounded by `checkpoint.remote_timeout`) and name what is not
uploaded.

**Resume.** Before choosing the checkpoint to resume from, rank 0 compares the newest complete
local checkpoint with the remote ones: when the remote holds a newer one (or the local folder
is missing), every rank downloads its own files of the newest remote copy that has a meta.json
(each checked against it: size and sha256) into `checkpoints/TAG`, then meta.json and `latest`
are written; a remote copy without meta.json, or with a file that does not match, is skipped
with a warning for the next older one. An unreachable store at start stops the run (it never
starts over at step 0 beside a remote copy it could not read). Credentials and endpoint come from
the AWS_* environment only (data_tools.remote); nothing here writes them anywhere.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.atomic import write_atomic
from data_tools.remote import CHUNK_BYTES, Remote, RemoteError, RemoteUnavailable, S3Path
from pretrain.train.checkpoint_meta import (
    LATEST,
    META,
    TAG_RE,
    UPLOAD_PINS,
    CheckpointMeta,
    FileRecord,
    find_resume_tag,
    tag_step,
)

log = logging.getLogger(__name__)

MARKERS = ".ranks"
POLL_S = 0.25           # rank 0 looks for the other ranks' markers this often
RETRY_LOG_EVERY_S = 10.0


class UploadError(RuntimeError):
    """An upload that cannot complete (a file changed, a rank's marker never came)."""


def owner_rank(rel: str, world: int) -> int:
    from pretrain.train.checkpoint import owner_rank as owner

    return owner(rel, world)


def own_files(tag_dir: Path, rank: int, world: int) -> list[str]:
    """The checkpoint's files this rank uploads (those it wrote), relative to tag_dir."""
    out = []
    for p in sorted(tag_dir.rglob("*")):
        rel = str(p.relative_to(tag_dir))
        if p.is_file() and p.name != META and not p.name.startswith(".") and \
                not p.name.endswith(".tmp") and owner_rank(rel, world) == rank:
            out.append(rel)
    return out


# ---- local pins: what pruning must keep -----------------------------------------------------

def pin_path(ckpt_dir: Path, tag: str, rank: int) -> Path:
    return ckpt_dir / UPLOAD_PINS / f"{tag}.rank{rank}"


def pin(ckpt_dir: Path, tag: str, rank: int) -> None:
    path = pin_path(ckpt_dir, tag, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def unpin(ckpt_dir: Path, tag: str, rank: int) -> None:
    pin_path(ckpt_dir, tag, rank).unlink(missing_ok=True)


def drop_stale_pins(ckpt_dir: Path, rank: int) -> None:
    """At start: this rank's pins of an earlier process (its uploads ended with it)."""
    pins = ckpt_dir / UPLOAD_PINS
    if pins.is_dir():
        for p in pins.glob(f"*.rank{rank}"):
            p.unlink(missing_ok=True)


# ---- the remote side --------------------------------------------------------------------------

def put_file(remote: Remote, path: Path, dest: S3Path) -> FileRecord:
    """Upload a local file (re-read on each try), returning the size and sha256 of the bytes
    that went up (the last, successful try)."""
    seen: dict[str, Any] = {}

    def chunks():
        h, n = hashlib.sha256(), 0
        seen.update(h=h, n=0)
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
                n += len(chunk)
                seen["n"] = n
                yield chunk

    remote.upload(chunks, dest)
    return FileRecord(bytes=seen["n"], sha256=seen["h"].hexdigest())


def remote_tags(remote: Remote, root: S3Path) -> dict[str, set[str]]:
    """{tag: names of its objects} under root (one recursive listing)."""
    tags: dict[str, set[str]] = collections.defaultdict(set)
    for rel in remote.list(root):
        first, _, rest = rel.partition("/")
        if TAG_RE.match(first) and rest:
            tags[first].add(rest)
    return dict(tags)


def read_remote_latest(remote: Remote, root: S3Path, deadline_s: float | None = None
                       ) -> str | None:
    """The tag the remote `latest` names (None: no `latest` there)."""
    try:
        text = remote.read_bytes(root.join(LATEST), deadline_s).decode("utf-8", "replace")
    except RemoteError as e:
        if e.kind == "key":
            return None
        raise
    return text.strip() or None


def delete_tag(remote: Remote, root: S3Path, tag: str, names: set[str]) -> None:
    """meta.json first: a copy half deleted is a partial one, never a complete one."""
    for name in sorted(names, key=lambda n: n != META):
        with contextlib.suppress(RemoteError):  # gone meanwhile
            remote.delete(root.join(tag, name))


@dataclass(frozen=True)
class Job:
    """One committed checkpoint waiting for its upload (tag = the folder's name)."""
    tag_dir: Path
    tag: str
    queued_at: float


class Uploader:
    """One rank's upload thread (module docstring). `submit` after each committed checkpoint;
    `close` at the end waits (bounded) and names what is not uploaded."""

    def __init__(self, ckpt_dir: Path, url: str, rank: int, world: int, keep_last: int,
                 timeout_s: float):
        self.ckpt_dir, self.rank, self.world = ckpt_dir, rank, world
        self.keep_last, self.timeout_s = keep_last, float(timeout_s)
        self.root = S3Path.parse(url)
        self.remote = Remote(deadline_s=timeout_s, on_retry=self._retried)
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._current: Job | None = None
        self._closing = False
        self._last_retry_log = 0.0
        self.uploaded: list[str] = []
        self.failed: list[tuple[str, str]] = []
        drop_stale_pins(ckpt_dir, rank)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="checkpoint-upload")
        self._thread.start()

    def submit(self, tag_dir: Path) -> None:
        pin(self.ckpt_dir, tag_dir.name, self.rank)
        with self._cond:
            self._queue.append(Job(tag_dir, tag_dir.name, time.monotonic()))
            waiting = len(self._queue) + (self._current is not None)
            self._cond.notify_all()
        if waiting > 2 and self.rank == 0:
            log.warning("checkpoint uploads fall behind the saves: %d waiting for %s (their "
                        "local copies are kept until uploaded); consider a larger "
                        "checkpoint.every_steps", waiting, self.root)

    def _retried(self, err: BaseException, wait_s: float) -> None:
        now = time.monotonic()
        if now - self._last_retry_log >= RETRY_LOG_EVERY_S:
            self._last_retry_log = now
            job = self._current
            log.warning("checkpoint upload%s to %s: object storage failing (%s); retrying for "
                        "up to checkpoint.remote_timeout (%.0f s), training goes on",
                        f" of {job.tag}" if job else "", self.root,
                        " ".join(str(err).split())[:200], self.timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                self._current = job = self._queue.popleft()
            try:
                self._one(job)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _one(self, job: Job) -> None:
        t0 = time.perf_counter()
        try:
            self._upload(job)
        except Exception as e:  # noqa: BLE001 - reported; training goes on
            self.failed.append((job.tag, f"{type(e).__name__}: {e}"))
            log.warning("checkpoint %s was not uploaded to %s: %s (the local copy stays)",
                        job.tag, self.root, e)
            return
        finally:
            unpin(self.ckpt_dir, job.tag, self.rank)
        self.uploaded.append(job.tag)
        log.info("checkpoint %s uploaded to %s in %.1f s", job.tag, self.root,
                 time.perf_counter() - t0)
        if self.rank == 0:
            self._prune_local()

    def _prune_local(self) -> None:
        """Rank 0, once a copy is complete remotely: local checkpoints kept only for their
        upload go now (checkpoint.keep_last, as at a save)."""
        from pretrain.train.checkpoint import prune

        try:
            latest = (self.ckpt_dir / LATEST).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return
        if TAG_RE.match(latest):
            prune(self.ckpt_dir, self.keep_last, keep=latest)

    def _upload(self, job: Job) -> None:
        """This rank's files, then its marker; rank 0 then commits the remote copy."""
        prefix = self.root.join(job.tag)
        if self.rank == 0 and self.remote.size(prefix.join(META)) is not None:
            self.remote.delete(prefix.join(META))  # an older writing of this tag: partial now
        records = {rel: put_file(self.remote, job.tag_dir / rel, prefix.join(rel)).model_dump()
                   for rel in own_files(job.tag_dir, self.rank, self.world)}
        marker = json.dumps({"rank": self.rank, "files": records}).encode()
        self.remote.put_bytes(prefix.join(MARKERS, f"rank{self.rank}.json"), marker)
        if self.rank == 0:
            self._commit(job, prefix)

    def _commit(self, job: Job, prefix: S3Path) -> None:
        """Rank 0: every rank's files there and matching meta.json → meta.json, latest, prune."""
        meta_bytes = (job.tag_dir / META).read_bytes()
        meta = CheckpointMeta.model_validate_json(meta_bytes)
        self._await_markers(job, prefix, meta)
        listed = self.remote.list(prefix)
        wrong = [rel for rel, rec in meta.files.items() if listed.get(rel) != rec.bytes]
        if wrong:
            raise UploadError(f"{prefix}: {', '.join(wrong[:3])} missing or of another size "
                              "after the upload")
        self.remote.put_bytes(prefix.join(META), meta_bytes)
        self.remote.put_bytes(self.root.join(LATEST), (job.tag + "\n").encode())
        self._prune(job.tag)

    def _await_markers(self, job: Job, prefix: S3Path, meta: CheckpointMeta) -> None:
        """Until every rank's marker lists its files with meta.json's sizes and hashes (a
        marker of an earlier writing of this tag may differ: it is read again)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            problems = self._marker_problems(prefix, meta)
            if not problems:
                return
            if time.monotonic() > deadline:
                raise UploadError(f"{prefix}: after {self.timeout_s:.0f} s: "
                                  + "; ".join(problems[:4]))
            time.sleep(POLL_S)

    def _marker_problems(self, prefix: S3Path, meta: CheckpointMeta) -> list[str]:
        names = self.remote.list(prefix.join(MARKERS))
        claimed: dict[str, dict] = {}
        problems = [f"rank {r} has not finished its upload" for r in range(self.world)
                    if f"rank{r}.json" not in names]
        if problems:
            return problems
        for r in range(self.world):
            data = json.loads(self.remote.read_bytes(prefix.join(MARKERS, f"rank{r}.json")))
            claimed.update(data.get("files", {}))
        for rel, rec in meta.files.items():
            got = claimed.get(rel)
            if got is None:
                problems.append(f"{rel}: uploaded by no rank")
            elif got.get("bytes") != rec.bytes or (rec.sha256 and got.get("sha256") !=
                                                   rec.sha256):
                problems.append(f"{rel}: the bytes uploaded differ from meta.json's sha256")
        return problems

    def _prune(self, latest: str) -> None:
        """Rank 0, after `latest`: keep the newest keep_last complete copies; remove older ones
        and stale partial ones; partial ones newer than `latest` are uploads in flight. A
        complete copy newer than `latest` is another lineage's (a run started over)."""
        tags = remote_tags(self.remote, self.root)
        step = tag_step(latest)
        complete = sorted((t for t, names in tags.items()
                           if META in names and tag_step(t) <= step), key=tag_step)
        keep = set(complete[-self.keep_last:]) | {latest}
        for tag, names in tags.items():
            if tag in keep or (tag_step(tag) > step and META not in names):
                continue
            if tag_step(tag) > step:
                log.warning("removing %s/%s: a complete copy newer than this run's %s "
                            "(another lineage: the run started over)", self.root, tag, latest)
            delete_tag(self.remote, self.root, tag, names)

    def pending(self) -> list[str]:
        with self._cond:
            jobs = ([self._current] if self._current else []) + list(self._queue)
        return [j.tag for j in jobs]

    def close(self) -> list[str]:
        """Wait for the queued uploads (at most checkpoint.remote_timeout); returns the tags
        not uploaded (a warning names them)."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queue or self._current) and time.monotonic() < deadline:
                self._cond.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        left = self.pending()
        if left:
            log.warning("checkpoint.remote: %s not uploaded to %s after waiting "
                        "checkpoint.remote_timeout (%.0f s); the local copies stay in %s",
                        ", ".join(left), self.root, self.timeout_s, self.ckpt_dir)
        failed = [t for t, _ in self.failed if t not in left]
        if failed and self.rank == 0:
            log.warning("checkpoint.remote: %s failed to upload (see above); the newest copy "
                        "there is %s", ", ".join(failed),
                        (self.uploaded or ["the one from before this start"])[-1])
        return left + failed


# ---- resume from the remote copy ------------------------------------------------------------

@dataclass
class StartPlan:
    """Rank 0's look at both sides at start (broadcast to every rank)."""

    candidates: list[str]           # remote tags newer than the local one, newest first
    local_tag: str | None
    remote_latest: str | None
    error: tuple[str, str] | None = None   # (kind, message): the store cannot be read


def plan_start(remote: Remote, root: S3Path, ckpt_dir: Path) -> StartPlan:
    """Rank 0: the complete remote copies newer than the newest complete local checkpoint;
    partial ones (no meta.json) are skipped with a warning."""
    local_tag = find_resume_tag(ckpt_dir)
    local_step = tag_step(local_tag) if local_tag else -1
    try:
        remote.check_access(root)
        tags = remote_tags(remote, root)
        latest = read_remote_latest(remote, root)
    except RemoteError as e:
        kind = "unavailable" if isinstance(e, RemoteUnavailable) else e.kind
        return StartPlan([], local_tag, None, (kind, str(e)))
    newer = sorted((t for t in tags if tag_step(t) > local_step), key=tag_step, reverse=True)
    for tag in newer:
        if META not in tags[tag]:
            log.warning("remote checkpoint %s/%s has no meta.json (an upload that did not "
                        "finish): skipped", root, tag)
    return StartPlan([t for t in newer if META in tags[t]], local_tag, latest)


def _start_error(plan: StartPlan, url: str) -> RemoteError:
    kind, message = plan.error
    text = (f"checkpoint.remote {url}: cannot read the remote checkpoints at start: {message}. "
            "The run does not start (it would start over beside a copy it cannot see); fix "
            "the store or its AWS_* settings, or remove checkpoint.remote")
    err = RemoteUnavailable(text, url) if kind == "unavailable" else RemoteError(text, kind, url)
    err.all_ranks = True
    return err


def download_share(remote: Remote, root: S3Path, ckpt_dir: Path, tag: str, rank: int,
                   world: int) -> tuple[bytes | None, list[str], str | None]:
    """This rank's files of a remote copy into checkpoints/TAG, each checked against its
    meta.json: (meta.json's bytes, files written, why it cannot be used or None). Outages
    past checkpoint.remote_timeout raise."""
    from pydantic import ValidationError

    from data_tools.atomic import temp_name

    written: list[str] = []
    try:
        meta_bytes = remote.read_bytes(root.join(tag, META))
        meta = CheckpointMeta.model_validate_json(meta_bytes)
        for rel, rec in meta.files.items():
            if owner_rank(rel, world) != rank:
                continue
            dest = ckpt_dir / tag / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_name(dest)
            try:
                remote.download(root.join(tag, rel), tmp, rec.bytes, rec.sha256)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(rel)
    except RemoteUnavailable:
        raise
    except RemoteError as e:
        if e.kind not in ("key", "checksum"):
            raise
        return None, written, str(e)
    except ValidationError as e:
        return None, written, f"its meta.json is not a valid record ({e.error_count()} problems)"
    return meta_bytes, written, None


def fetch_newer(ckpt_dir: Path, url: str, timeout_s: float, rank: int, world: int,
                download: bool = True) -> StartPlan:
    """Collective, before the resume choice: download the newest complete remote copy newer
    than the local checkpoints (module docstring; with `download` False only the store is
    checked). Returns the plan (what both sides held)."""
    import torch.distributed as dist

    remote, root = Remote(deadline_s=timeout_s), S3Path.parse(url)
    box = [plan_start(remote, root, ckpt_dir) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    plan: StartPlan = box[0]
    if plan.error:
        raise _start_error(plan, url)
    for tag in plan.candidates if download else []:
        if _fetch_one(remote, root, ckpt_dir, tag, rank, world):
            plan.local_tag = tag
            break
    return plan


def _fetch_one(remote: Remote, root: S3Path, ckpt_dir: Path, tag: str, rank: int,
               world: int) -> bool:
    """Collective: one remote copy downloaded and committed locally (True), or skipped."""
    import shutil

    import torch.distributed as dist

    from pretrain.train.checkpoint_meta import UNIVERSAL_SUFFIX

    if rank == 0:  # a partial local folder of this tag (or its universal copy) must not mix
        for name in (tag, tag + UNIVERSAL_SUFFIX):
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)
        log.info("downloading checkpoint %s/%s (newer than the local checkpoints)", root, tag)
    dist.barrier()
    t0 = time.perf_counter()
    try:
        meta_bytes, written, why = download_share(remote, root, ckpt_dir, tag, rank, world)
        outcome = ("skip", why) if why else ("ok", None)
    except RemoteError as e:
        meta_bytes, written, outcome = None, [], ("fatal", str(e))
    outcomes = [None] * world
    dist.all_gather_object(outcomes, outcome)
    if fatal := [m for k, m in outcomes if k == "fatal"]:
        err = RemoteUnavailable(f"downloading checkpoint {root}/{tag} at start failed: "
                                f"{fatal[0]}", str(root))
        err.all_ranks = True
        raise err
    if skipped := [m for k, m in outcomes if k == "skip"]:
        for rel in written:
            (ckpt_dir / tag / rel).unlink(missing_ok=True)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            log.warning("remote checkpoint %s/%s is incomplete or damaged: %s; skipped",
                        root, tag, skipped[0])
        return False
    if rank == 0:  # meta.json, then latest: the local commit, as after a save
        write_atomic(ckpt_dir / tag / META, meta_bytes)
        write_atomic(ckpt_dir / LATEST, tag + "\n")
    dist.barrier()
    if not (ckpt_dir / tag / META).is_file():  # a node without the shared filesystem
        (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
        write_atomic(ckpt_dir / tag / META, meta_bytes)
        write_atomic(ckpt_dir / LATEST, tag + "\n")
    if rank == 0:
        log.info("checkpoint %s/%s downloaded and verified in %.1f s", root, tag,
                 time.perf_counter() - t0)
    return True
