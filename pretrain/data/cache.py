"""The node cache: whole shards from object storage on a node-local disk, shared by every
process of the node (ranks, their DataLoader workers), never larger than `data.cache_limit`.

Layout of `data.cache_dir` (content-addressed, so any number of runs and folders share it):
```
CACHE/shards/<sha256>                     a complete shard (or a folder's tokenizer.json, held
                                          the same way), verified against the manifest
CACHE/shards/.<sha256>.<bytes>.tmp<pid>_<thread>   a download in progress (at its full size)
CACHE/meta/...                            other small files (counted too)
CACHE/procs/<pid>.<n>.json                each handle's pins and the next use of shards
CACHE/.lock                               lockf: every change of the folder happens under it
```
A process *pins* the shards it has memory-mapped; a pinned shard is never deleted. Each
process keeps at most `budget` shards mapped (its share of the limit), so pins of all processes
together never exceed the limit and a process that needs a shard always finds room (no
deadlock, whatever the limit: a limit too small for that is refused before any rank starts,
pretrain.data.remote_plan). Room is made by deleting unpinned shards, the one whose next use
is farthest first (next uses published by each rank's prefetcher, in global steps; a shard
nobody will use soon goes first, least recently used among those) — Belady's rule, which the
loader can follow because it knows its future order. A read-ahead (not needed now) only
deletes shards needed later than the one it fetches.

One download per node: a shard being downloaded (a live process's temp file) is waited for,
never fetched twice. Only the process that made the cache downloads (a forked DataLoader
worker waits for its rank's prefetcher: the S3 client does not survive fork).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.remote import RemoteError, RemoteUnavailable, S3Path, shared_remote
from pretrain.data.stream import DataError

log = logging.getLogger("pretrain.data")

SHARDS_DIR, META_DIR, PROCS_DIR, LOCK_FILE = "shards", "meta", "procs", ".lock"
NEVER = 1 << 62            # the next use of a shard nobody has announced
POLL_S = (0.02, 0.25)      # waits for another process's download or for room
GATHER_TIMEOUT_S = 120.0   # the least a gather waits for its shard


@dataclass(frozen=True)
class ShardRef:
    """One shard in object storage, as its manifest describes it."""

    url: S3Path
    size: int
    sha256: str


@dataclass
class CacheStats:
    """What this process saw (the rank's prefetcher and gathers)."""

    hits: int = 0            # shards that were in the cache when first asked for
    misses: int = 0          # ... that had to be downloaded or waited for
    downloads: int = 0
    remote_bytes: int = 0    # bytes this process downloaded
    evictions: int = 0
    wait_s: float = 0.0      # time spent waiting for a shard


@dataclass
class _Scan:
    """The folder as seen under the lock."""

    complete: dict[str, tuple[int, float]] = field(default_factory=dict)  # sha -> (bytes, mtime)
    downloading: dict[str, int] = field(default_factory=dict)  # sha -> pid (live)
    used: int = 0
    pinned: set[str] = field(default_factory=set)
    next_use: dict[str, int] = field(default_factory=dict)


# One thread lock per cache folder and process, shared by every NodeCache on that folder: a
# POSIX record lock does not exclude the threads of one process, and closing any descriptor of
# the lock file drops all of the process's record locks on it — two handles in one process
# (a previous loader's read-ahead still finishing a download, a second DataSource) must take
# turns through this lock first.
_ROOT_LOCKS: dict[str, threading.RLock] = {}
_ROOT_LOCKS_GUARD = threading.Lock()


_ROOT_CHANGES: dict[str, _Changes] = {}


class _Changes:
    """Downloads this process finished (or gave up) in one cache folder: a waiter for a shard
    another thread of the process is fetching wakes at once, not at its next poll."""

    def __init__(self):
        self.cond, self.count = threading.Condition(), 0

    def done(self) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait(self, seen: int, timeout_s: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.count != seen, timeout_s)


def _root_lock(root: Path) -> threading.RLock:
    with _ROOT_LOCKS_GUARD:
        return _ROOT_LOCKS.setdefault(os.path.realpath(root), threading.RLock())


def _root_changes(root: Path) -> _Changes:
    with _ROOT_LOCKS_GUARD:
        return _ROOT_CHANGES.setdefault(os.path.realpath(root), _Changes())


def _fresh_locks_after_fork() -> None:
    """In a forked child: no other thread exists, so every lock starts free."""
    global _ROOT_LOCKS_GUARD
    _ROOT_LOCKS_GUARD = threading.Lock()
    _ROOT_LOCKS.clear()
    _ROOT_CHANGES.clear()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


_SERIALS = itertools.count()


def _remove_record(path: Path) -> None:
    """A handle was dropped without close(): its pins go with it (only in the process that
    wrote them; a forked child's copy of the handle has a record of its own)."""
    if path.name.split(".", 1)[0] == str(os.getpid()):
        with contextlib.suppress(OSError):
            path.unlink()


def _start_time(pid: int) -> str | None:
    """The process's start time (/proc), to tell a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None = None) -> bool:
    now = _start_time(pid)
    return now is not None and (start is None or start == now)


class LoaderClosed(DataError):
    """A DataLoader worker's wait in the cache ended because its loader is closing."""


class NodeCache:
    """One process's handle on the node cache (see the module doc)."""

    def __init__(self, root: str | Path, limit_bytes: int, budget: int,
                 timeout_s: float):
        self.root = Path(root)
        self.limit, self.budget, self.timeout_s = int(limit_bytes), int(budget), float(timeout_s)
        # a gather inside a step waits longer: the step-boundary check (pretrain.train.
        # remote_data) has already seen the store answer; here it is the cache's contention
        self.gather_timeout_s = max(GATHER_TIMEOUT_S, 2 * self.timeout_s)
        for d in (SHARDS_DIR, META_DIR, PROCS_DIR):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.owner_pid = os.getpid()          # the only process that downloads
        self._serial = next(_SERIALS)         # this handle among the process's
        weakref.finalize(self, _remove_record, self._record_path())
        self.stats = CacheStats()
        self._pins: dict[str, int] = {}       # sha -> pin count (this process)
        self._future: dict[str, int] = {}     # sha -> next use (global step), this process
        # every shard this process has mapped, least recently used first: (holder, file) ->
        # the holder (its let_go(file) unmaps and unpins it); at most `budget` entries
        self._mapped: OrderedDict[tuple[int, int], object] = OrderedDict()
        self.files_registered = 0             # shard files of the splits read through it
        self._tlock = _root_lock(self.root)
        self._changes = _root_changes(self.root)
        # set in a DataLoader worker (pretrain.data.batches): true once its loader is closing;
        # a wait for room or for another process's download then ends with LoaderClosed
        self.closing: Callable[[], bool] | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (c := ref()) and c._after_fork())

    def _after_fork(self) -> None:
        """In a forked child (a DataLoader worker): its own pins, a fresh thread lock."""
        self._tlock = _root_lock(self.root)
        self._changes = _root_changes(self.root)
        self._serial = next(_SERIALS)
        self._pins, self._future, self.stats = {}, {}, CacheStats()
        self._mapped = OrderedDict()

    # ---- this process's share: at most `budget` shards mapped, across all its splits -------
    def mapped(self, holder: object, ids) -> None:
        """`holder` mapped (or used again) its files `ids`; holder.let_go(i) unmaps and unpins
        one."""
        for i in ids:
            key = (id(holder), int(i))
            self._mapped[key] = holder
            self._mapped.move_to_end(key)

    def unmapped(self, holder: object, i: int) -> None:
        self._mapped.pop((id(holder), i), None)

    def room_for(self, holder: object, ids) -> None:
        """Before `holder` maps files `ids`: let go of this process's least recently used
        mapped shards (of any split, never one of `ids`) so that all fit in the budget."""
        keep = {(id(holder), int(i)) for i in ids}
        excess = len(self._mapped.keys() | keep) - self.budget
        for key in [k for k in self._mapped if k not in keep]:
            if excess <= 0:
                break
            self._mapped.pop(key).let_go(key[1])
            excess -= 1

    @property
    def can_download(self) -> bool:
        return os.getpid() == self.owner_pid

    def path(self, sha256: str) -> Path:
        return self.root / SHARDS_DIR / sha256

    # ---- the lock and the folder's state ----------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """The node-wide lock: a POSIX record lock (lockf), which belongs to this process and
        is not inherited by a forked child — a flock held by some thread at the moment a
        DataLoader worker forks would stay held by the child's copy of the descriptor — plus
        a thread lock, since record locks do not exclude the threads of one process."""
        with self._tlock:
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _scan(self) -> _Scan:
        """Files, live downloads, pins and next uses (leftovers of dead processes removed)."""
        st = _Scan()
        for entry in os.scandir(self.root / SHARDS_DIR):
            name = entry.name
            if not name.startswith("."):
                try:
                    info = entry.stat()
                except FileNotFoundError:     # removed by hand (or a cache folder wiped)
                    continue
                st.complete[name] = (info.st_size, info.st_mtime)
                st.used += info.st_size
                continue
            sha, size, pid = _parse_temp(name)
            if sha is None or not _alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)            # a dead download's leftover
                continue
            try:                                     # a failed download removes its own
                now = entry.stat().st_size
            except FileNotFoundError:
                continue
            st.downloading[sha] = pid
            st.used += max(size, now)
        for entry in os.scandir(self.root / META_DIR):
            with contextlib.suppress(OSError):            # renamed since the listing
                st.used += entry.stat().st_size
        self._read_procs(st)
        return st

    def _read_procs(self, st: _Scan) -> None:
        for entry in os.scandir(self.root / PROCS_DIR):
            try:
                rec = json.loads(Path(entry.path).read_text())
                pid, start = int(rec["pid"]), rec.get("start")
            except (OSError, ValueError, KeyError, TypeError):
                continue                              # being replaced: read next time
            if pid == os.getpid() and rec.get("serial") == self._serial:
                rec = {"pins": list(self._pins), "next_use": self._future}
            elif not _alive(pid, start):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            st.pinned.update(rec.get("pins", []))
            for sha, step in rec.get("next_use", {}).items():
                st.next_use[sha] = min(int(step), st.next_use.get(sha, NEVER))

    def _write_proc(self) -> None:
        """procs/<pid>.<n>.json: this handle's pins and announced next uses (temp + rename;
        a process may hold several handles, e.g. a finished loader's read-ahead still
        completing a download beside a new loader: each one's pins count)."""
        pid, path = os.getpid(), self._record_path()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"pid": pid, "serial": self._serial,
                                   "start": _start_time(pid), "pins": sorted(self._pins),
                                   "next_use": self._future}))
        os.replace(tmp, path)

    def _record_path(self) -> Path:
        return self.root / PROCS_DIR / f"{os.getpid()}.{self._serial}.json"

    # ---- pins and announcements ---------------------------------------------------------------
    def unpin(self, shas: list[str]) -> None:
        with self._tlock:
            changed = False
            for sha in shas:
                if sha in self._pins:
                    self._pins[sha] -= 1
                    if self._pins[sha] <= 0:
                        del self._pins[sha]
                        changed = True
            if changed:
                self._write_proc()

    def announce(self, next_use: dict[str, int]) -> None:
        """This process's upcoming uses: shard -> global step of its next use."""
        with self._tlock:
            self._future = dict(next_use)
            self._write_proc()

    def close(self) -> None:
        """Drop this process's pins and announcements (its shards stay in the cache)."""
        with self._tlock:
            self._pins, self._future = {}, {}
            with contextlib.suppress(OSError):
                self._record_path().unlink()

    def present(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def used_bytes(self) -> int:
        with self._locked():
            return self._scan().used

    # ---- getting a shard --------------------------------------------------------------------
    def get(self, ref: ShardRef, pin: bool = True, urgent: bool = True,
            deadline: float | None = None,
            cancelled: Callable[[], bool] | None = None) -> Path | None:
        """The shard's local path, downloaded if needed (pinned when `pin`). Urgent: waits for
        room or for another process's download until `deadline` (monotonic; default now +
        timeout), then RemoteUnavailable. Not urgent (read-ahead): None when there is no room
        without deleting a shard needed sooner, or when it is being downloaded elsewhere.
        None too, between waits, once `cancelled()` is true (a closing read-ahead)."""
        deadline = deadline or time.monotonic() + self.gather_timeout_s
        t0, wait, first = time.monotonic(), POLL_S[0], True
        while True:
            with self._locked():
                seen = self._changes.count        # downloads of this process finished so far
                st = self._scan()
                if ref.sha256 in st.complete:
                    return self._take(ref, pin, first if urgent else None, t0)
                tmp = None
                if ref.sha256 not in st.downloading and self.can_download and \
                        self._make_room(st, ref, urgent):
                    tmp = self._reserve(ref)
            if tmp is not None:
                try:
                    self._download(ref, tmp, deadline)
                    with self._locked():
                        try:
                            os.replace(tmp, self.path(ref.sha256))
                        except FileNotFoundError:   # removed meanwhile: look again
                            continue
                        return self._take(ref, pin, False if urgent else None, t0)
                finally:
                    self._changes.done()
            if not urgent or (cancelled is not None and cancelled()):
                return None
            if self.closing is not None and self.closing():
                raise LoaderClosed(f"{ref.url}: the loader closed while this process waited "
                                   "for the shard in the node cache")
            first = False
            if time.monotonic() + wait > deadline:
                raise RemoteUnavailable(f"{ref.url}: not in the node cache {self.root} after "
                                        f"{time.monotonic() - t0:.0f} s (download failing, or "
                                        "no room freed)", str(ref.url))
            self._changes.wait(seen, wait)     # woken by this process's downloads at once
            wait = min(wait * 2, POLL_S[1])

    def _take(self, ref: ShardRef, pin: bool, hit: bool | None, t0: float) -> Path:
        """Under the lock: count (hit: None for a read-ahead), pin, mark used (LRU order) and
        return the shard's path."""
        path = self.path(ref.sha256)
        if hit:
            self.stats.hits += 1
        elif hit is not None:
            self.stats.misses += 1
            self.stats.wait_s += time.monotonic() - t0
        if pin:
            self._pins[ref.sha256] = self._pins.get(ref.sha256, 0) + 1
            self._write_proc()
        with contextlib.suppress(OSError):
            os.utime(path)
        return path

    def _reserve(self, ref: ShardRef) -> Path:
        tmp = self.root / SHARDS_DIR / \
            f".{ref.sha256}.{ref.size}.tmp{os.getpid()}_{threading.get_ident()}"
        tmp.touch()
        return tmp

    def _make_room(self, st: _Scan, ref: ShardRef, urgent: bool) -> bool:
        """Delete unpinned shards (farthest next use first) until `ref` fits under the limit;
        a read-ahead deletes only shards used later than `ref`. False: no room (nothing
        deleted)."""
        need = st.used + ref.size - self.limit
        if need <= 0:
            return True
        mine = -1 if urgent else st.next_use.get(ref.sha256, NEVER)
        victims = []
        order = sorted((sha for sha in st.complete if sha not in st.pinned),
                       key=lambda s: (-st.next_use.get(s, NEVER), st.complete[s][1]))
        for sha in order:
            if need <= 0 or st.next_use.get(sha, NEVER) <= mine:
                break
            victims.append(sha)
            need -= st.complete[sha][0]
        if need > 0:
            return False
        for sha in victims:
            with contextlib.suppress(OSError):
                os.unlink(self.path(sha))
        self.stats.evictions += len(victims)
        return True

    def _download(self, ref: ShardRef, tmp: Path, deadline: float) -> None:
        """Into the temp file, verified against the manifest's sha256 (a mismatch is tried once
        more, then an error naming the bucket and key); the temp file is gone on failure."""
        remote = shared_remote()
        try:
            for attempt in (1, 2):
                left = max(1.0, deadline - time.monotonic())
                try:
                    remote.download(ref.url, tmp, ref.size, ref.sha256, deadline_s=left)
                    break
                except RemoteError as e:
                    if e.kind != "checksum" or isinstance(e, RemoteUnavailable):
                        raise
                    if attempt == 2:
                        raise RemoteError(
                            f"{ref.url} (bucket {ref.url.bucket!r}, key {ref.url.key!r}): its "
                            f"bytes differ from the manifest twice ({e}); the object was changed "
                            "or corrupted in storage: copy the shard folder again", "checksum",
                            str(ref.url)) from None
                    log.warning("%s; downloading it again", e)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.stats.downloads += 1
        self.stats.remote_bytes += ref.size


def _parse_temp(name: str) -> tuple[str | None, int, int]:
    """'.<sha>.<bytes>.tmp<pid>_<thread>' -> (sha, bytes, pid); (None, 0, 0) otherwise."""
    parts = name[1:].split(".")
    pid = parts[2][3:].split("_")[0] if len(parts) == 3 else ""
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].startswith("tmp") or \
            not pid.isdigit():
        return None, 0, 0
    return parts[0], int(parts[1]), int(pid)
