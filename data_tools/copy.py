"""`copy SRC DST`: a shard folder between local disk and object storage (local -> s3, s3 ->
local, s3 -> s3, local -> local). Every shard and the tokenizer are checked against the
manifest's sha256 on the way (a mismatch is an error naming the file; nothing wrong is ever
written under its final name), the manifest is written last (the commit point: a reader never
sees a half-copied folder), and an interrupted copy resumes where it stopped (DST holds a
`.arrowtrain-copy.json` record of the files done until the manifest is written). `--workers N`
transfers N files at once; the bar shows bytes and MB/s.

Object storage: the endpoint and credentials come from the AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...; see data_tools.remote), never from arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data_tools.atomic import atomic_path, write_atomic
from data_tools.errors import DataToolsError
from data_tools.manifest import MANIFEST_NAME, Manifest, ManifestError
from data_tools.remote import S3Path, is_remote, shared_remote

log = logging.getLogger("data_tools")
STATE_NAME = ".arrowtrain-copy.json"
READ_BYTES = 8 << 20


def add_arguments(p) -> None:
    p.add_argument("src", metavar="SRC", help="a shard folder: a local path or s3://BUCKET/PREFIX")
    p.add_argument("dst", metavar="DST", help="where to copy it: a local path or "
                   "s3://BUCKET/PREFIX")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="files transferred at once")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished shard folder at DST that holds other data")


# ---- both ends, local or remote ------------------------------------------------------------

class End:
    """A shard folder's location: a local folder or an s3:// prefix."""

    def __init__(self, where: str):
        self.where = where.rstrip("/") if is_remote(where) else where
        self.remote = is_remote(where)
        self.url = S3Path.parse(where) if self.remote else None
        self.path = None if self.remote else Path(where)

    def __str__(self) -> str:
        return self.where

    def name(self, rel: str) -> str:
        return str(self.url.join(rel)) if self.remote else str(self.path / rel)

    def read_bytes(self, rel: str) -> bytes | None:
        """A small file (None when missing)."""
        if self.remote:
            return None if shared_remote().size(self.url.join(rel)) is None else \
                shared_remote().read_bytes(self.url.join(rel))
        p = self.path / rel
        return p.read_bytes() if p.is_file() else None

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.remote:
            shared_remote().put_bytes(self.url.join(rel), data)
        else:
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path / rel, data)

    def delete(self, rel: str) -> None:
        if self.remote:
            shared_remote().delete(self.url.join(rel))
        else:
            (self.path / rel).unlink(missing_ok=True)

    def sizes(self) -> dict[str, int]:
        """{relative path: bytes} of every file under the folder."""
        if self.remote:
            return shared_remote().list(self.url)
        if not self.path.is_dir():
            return {}
        return {str(p.relative_to(self.path)): p.stat().st_size
                for p in self.path.rglob("*") if p.is_file()}


# ---- one file -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    rel: str        # path relative to the folder, e.g. "train/00000.arrow"
    size: int
    sha256: str


def _local_chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            yield chunk


def _checked(item: Item, digest: str, where: str) -> None:
    if digest != item.sha256:
        raise DataToolsError(f"{where}: sha256 {digest[:16]}... differs from the manifest's "
                             f"{item.sha256[:16]}... (the file changed or is corrupt); nothing "
                             "was written for it")


def _sha256_local(path: Path, progress) -> str:
    h = hashlib.sha256()
    for chunk in _local_chunks(path):
        h.update(chunk)
        progress(len(chunk) / 2)      # hashing is half of a local -> s3 transfer's work
    return h.hexdigest()


def transfer(src: End, dst: End, item: Item, progress) -> None:
    """One file, verified against `item.sha256` before it gets its final name."""
    if not src.remote:
        path = src.path / item.rel
        if not path.is_file():
            raise DataToolsError(f"{path}: listed in the manifest, missing")
        if dst.remote:
            _checked(item, _sha256_local(path, progress), str(path))
            shared_remote().upload(lambda: _local_chunks(path), dst.url.join(item.rel),
                                   lambda n: progress(n / 2))
        else:
            _local_to_local(path, dst.path / item.rel, item, progress)
        return
    url = src.url.join(item.rel)
    if not dst.remote:
        target = dst.path / item.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            _checked(item, shared_remote().download(url, tmp, item.size, progress=progress),
                     str(url))
        return
    with tempfile.TemporaryDirectory(prefix="arrowtrain-copy-") as d:    # s3 -> s3
        tmp = Path(d) / "shard"
        _checked(item, shared_remote().download(url, tmp, item.size,
                                                progress=lambda n: progress(n / 2)), str(url))
        shared_remote().upload(lambda: _local_chunks(tmp), dst.url.join(item.rel),
                               lambda n: progress(n / 2))


def _local_to_local(path: Path, target: Path, item: Item, progress) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for chunk in _local_chunks(path):
            h.update(chunk)
            out.write(chunk)
            progress(len(chunk))
        out.flush()
        _checked(item, h.hexdigest(), str(path))


# ---- the folder ---------------------------------------------------------------------------

def read_source(src: End) -> tuple[Manifest, bytes]:
    """The source's manifest (checked) and its bytes (copied verbatim, written last)."""
    raw = src.read_bytes(MANIFEST_NAME)
    if raw is None:
        raise ManifestError(f"{src.name(MANIFEST_NAME)}: not found — not a finished shard "
                            "folder")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{src.name(MANIFEST_NAME)}: invalid JSON: {e}") from None
    m = Manifest.from_dict(obj, src.name(MANIFEST_NAME))
    if problems := m.inconsistencies():
        raise ManifestError(f"{src.name(MANIFEST_NAME)}: " + "; ".join(problems))
    return m, raw


def items_of(m: Manifest) -> list[Item]:
    """The tokenizer (its size is not in the manifest: -1), then every shard in order."""
    tok = m.tokenizer
    return [Item(tok.file, -1, tok.sha256),
            *(Item(s.file, s.file_bytes, s.sha256) for _, s in m.shards())]


def check_destination(dst: End, m: Manifest, overwrite: bool) -> str | None:
    """'done' when DST already holds this folder; refuses another finished folder unless
    overwrite."""
    raw = dst.read_bytes(MANIFEST_NAME)
    if raw is None:
        return None
    try:
        old = Manifest.from_dict(json.loads(raw.decode("utf-8")), dst.name(MANIFEST_NAME))
    except (ManifestError, ValueError, UnicodeDecodeError):
        old = None
    if old is not None and old.fingerprint == m.fingerprint:
        return "done"
    if not overwrite:
        raise DataToolsError(f"{dst} already holds a finished shard folder with other data "
                             f"(fingerprint {old.fingerprint[:16] if old else 'unreadable'}... "
                             f"vs {m.fingerprint[:16]}...); pass --overwrite to replace it")
    dst.delete(MANIFEST_NAME)      # uncommitted first: a reader never sees a mix
    return None


class State:
    """DST/.arrowtrain-copy.json: the files already copied (and verified) for this source."""

    def __init__(self, dst: End, fingerprint: str):
        self.dst, self.fingerprint = dst, fingerprint
        self.lock = threading.Lock()
        raw = dst.read_bytes(STATE_NAME)
        try:
            rec = json.loads(raw) if raw else {}
        except ValueError:
            rec = {}
        self.done: dict[str, str] = rec.get("done", {}) if \
            rec.get("fingerprint") == fingerprint else {}

    def mark(self, item: Item) -> None:
        with self.lock:
            self.done[item.rel] = item.sha256
            data = json.dumps({"fingerprint": self.fingerprint, "done": self.done}).encode()
            self.dst.write_bytes(STATE_NAME, data)

    def finish(self) -> None:
        self.dst.delete(STATE_NAME)


def plan_items(src: End, dst: End, m: Manifest, state: State) -> tuple[list[Item], int]:
    """What is left to copy (sizes filled in from the source listing) and how many are done."""
    src_sizes, dst_sizes = src.sizes(), dst.sizes()
    todo, done = [], 0
    for item in items_of(m):
        size = src_sizes.get(item.rel)
        if size is None:
            raise DataToolsError(f"{src.name(item.rel)}: listed in the manifest, missing")
        if item.size >= 0 and size != item.size:
            raise DataToolsError(f"{src.name(item.rel)}: {size} bytes, the manifest says "
                                 f"{item.size}")
        item = Item(item.rel, size, item.sha256)
        if state.done.get(item.rel) == item.sha256 and dst_sizes.get(item.rel) == size:
            done += 1
            continue
        todo.append(item)
    return todo, done


def copy_folder(src_where: str, dst_where: str, workers: int = 4,
                overwrite: bool = False) -> dict:
    """Copy a shard folder (module doc); returns {files, bytes, seconds, skipped}."""
    src, dst = End(src_where), End(dst_where)
    if workers < 1:
        raise DataToolsError(f"--workers {workers} must be >= 1")
    m, raw = read_source(src)
    if check_destination(dst, m, overwrite) == "done":
        log.info("%s already holds this shard folder (fingerprint %s...); nothing to do", dst,
                 m.fingerprint[:16])
        return {"files": 0, "bytes": 0, "seconds": 0.0, "skipped": len(items_of(m))}
    state = State(dst, m.fingerprint)
    todo, done = plan_items(src, dst, m, state)
    if done:
        log.info("resuming: %d file(s) already copied and verified", done)
    t0, total = time.perf_counter(), sum(i.size for i in todo)
    _run_transfers(src, dst, todo, state, workers, total)
    dst.write_bytes(MANIFEST_NAME, raw)            # the commit point, last
    state.finish()
    seconds = time.perf_counter() - t0
    log.info("copied %s -> %s: %d file(s), %.1f MB in %.1f s (%.1f MB/s); manifest written "
             "last", src, dst, len(todo), total / 1e6, seconds, total / 1e6 / max(seconds, 1e-9))
    return {"files": len(todo), "bytes": total, "seconds": seconds, "skipped": done}


def _run_transfers(src: End, dst: End, todo: list[Item], state: State, workers: int,
                   total: int) -> None:
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="copy",
               disable=None)
    bar_lock = threading.Lock()

    def progress(n: float) -> None:
        with bar_lock:
            bar.update(n)

    def one(item: Item) -> None:
        transfer(src, dst, item, progress)
        state.mark(item)

    errors = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, item): item for item in todo}
        for fut in as_completed(futures):
            try:
                fut.result()
            except DataToolsError as e:
                errors.append(str(e))
    bar.close()
    if errors:
        raise DataToolsError(f"{len(errors)} file(s) not copied (the rest are; run the same "
                             "command again to resume):\n  " + "\n  ".join(errors[:10]))


def main(args) -> int:
    copy_folder(args.src, args.dst, args.workers, args.overwrite)
    return 0


def stage_dir(out: str) -> Path:
    """Where `shard --out s3://...` writes before uploading (one folder per destination)."""
    digest = hashlib.sha256(out.encode()).hexdigest()[:16]
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / f"arrowtrain-stage-{digest}"


def remove_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
