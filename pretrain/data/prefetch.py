"""Read-ahead over object storage: the loader knows its future order, so each rank's
prefetcher downloads the shards of the micro-batches ahead of the one being consumed, in use
order, and tells the node cache when each shard is next used (global steps), which is what
eviction goes by (pretrain.data.cache).

`Feeder` runs one thread per rank (in the rank's main process; DataLoader workers only read the
cache). Its targets, recomputed whenever a micro-batch is consumed: every shard of the next
micro-batch (fetched even if that means deleting others), then the next `data.prefetch_shards`
distinct shards after those (fetched only where room can be made from shards used later).
`ensure` is the trainer's step-boundary wait: all shards of a step's micro-batches, with the
outcome (present / waited / unavailable after `data.remote_timeout`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from data_tools.remote import RemoteError, RemoteUnavailable
from pretrain.data.cache import NodeCache, ShardRef

log = logging.getLogger("pretrain.data")

HORIZON_MICRO_BATCHES = 2048   # how far ahead next uses are announced (at most)
ANNOUNCE_EVERY = 16            # micro-batches between two announcements of next uses
WARM_SCAN = 64                 # micro-batches checked ahead when nothing is missing
BLOCK = 64                     # micro-batches whose shards are computed together
FETCH_THREADS = 4              # concurrent downloads of one rank's read-ahead
IDLE_WAKE_S = 1.0
RESIDENT_WAKE_S = 10.0         # everything cached and it all fits: look again this seldom


def shards_of_samples(src, split: str, indices: np.ndarray) -> list[ShardRef]:
    """The object-storage shards that samples `indices` of `split` read, in first-use order
    (local folders contribute none; which files a sample reads is the objective's
    `file_spans`)."""
    indices = np.asarray(indices, np.int64)
    folder, within = src.locate(split, indices)
    found: list[tuple[int, ShardRef]] = []                 # (first sample position, ref)
    for k in np.unique(folder).tolist():
        if not src.folders[k].remote:
            continue
        sel = np.flatnonzero(folder == k)
        shards, first, last = src.objective.file_spans(src, split, k, within[sel])
        for pos, a, b in zip(sel.tolist(), first.tolist(), last.tolist()):
            found += [(pos, shards.refs[i]) for i in range(a, b + 1)]
    found.sort(key=lambda x: x[0])
    return list(OrderedDict((ref.sha256, ref) for _, ref in found).values())


@dataclass
class StepData:
    """What `ensure` found for one step (this rank)."""

    ok: bool
    hits: int = 0         # shards already in the node cache
    misses: int = 0       # shards waited for
    wait_s: float = 0.0
    error: str | None = None


class Feeder:
    """The read-ahead of one rank over its micro-batches k = 0, 1, ... (see the module doc).

    `micro_batch_shards(k)` gives the shards micro-batch k reads; `step_of(k)` its global
    step (for the announced next uses)."""

    def __init__(self, cache: NodeCache, micro_batch_shards: Callable[[int], list[ShardRef]],
                 step_of: Callable[[int], int], depth: int, total_shards: int,
                 horizon: int | None = None, every_ref: list[ShardRef] | None = None):
        self.cache, self.shards_of, self.step_of = cache, micro_batch_shards, step_of
        # every shard the run reads: when the limit holds them all and all are in the cache,
        # there is nothing to fetch or to announce (a warm cache costs the loader nothing)
        self.every_ref = list(every_ref or [])
        self._fits = bool(every_ref) and cache.limit >= sum(r.size for r in self.every_ref)
        self.depth, self.total_shards = depth, total_shards   # shards the split has in all
        self.horizon = horizon or HORIZON_MICRO_BATCHES
        self.next_k = 0                      # the next micro-batch to be consumed
        self._wake_at = 0                    # consumed() notifies once next_k reaches it
        self._announced_at = self._horizon_at = -ANNOUNCE_EVERY
        self._horizon: dict[str, int] = {}
        self._memo: dict[int, list[ShardRef]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="arrowtrain-fetch")
        self._thread = threading.Thread(target=self._run, name="arrowtrain-prefetch",
                                        daemon=True)
        self._thread.start()

    # ---- the consumer's side ---------------------------------------------------------------
    def consumed(self, k: int) -> None:
        """Micro-batch k was handed to the trainer (the thread is woken only when it waits for
        this point: a warm cache costs the loader a comparison per micro-batch)."""
        self.next_k = max(self.next_k, k + 1)
        if self.next_k >= self._wake_at:
            with self._cond:
                self._cond.notify_all()

    def ensure(self, ks: range, timeout_s: float) -> StepData:
        """Every shard of micro-batches `ks` in the node cache (downloaded here if the read-ahead
        has not got it yet), or not after `timeout_s` of failures (ok False)."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        out = StepData(ok=True)
        for ref in self._refs(ks):
            if self.cache.present(ref.sha256):
                out.hits += 1
                continue
            out.misses += 1
            try:
                self.cache.get(ref, pin=False, urgent=True, deadline=deadline)
            except RemoteUnavailable as e:
                out.ok, out.error = False, str(e)
                break
        out.wait_s = time.monotonic() - t0
        return out

    def _refs(self, ks) -> list[ShardRef]:
        seen: OrderedDict[str, ShardRef] = OrderedDict()
        for k in ks:
            for ref in self._micro_batch(k):
                seen.setdefault(ref.sha256, ref)
        return list(seen.values())

    def _micro_batch(self, k: int) -> list[ShardRef]:
        with self._cond:
            refs = self._memo.get(k)
        if refs is None:
            refs = self.shards_of(k)
            with self._cond:
                self._memo[k] = refs
        return refs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- the read-ahead thread ---------------------------------------------------------------
    def resident(self) -> bool:
        """Every shard the run reads is in the cache, and the limit holds them all."""
        return self._fits and all(self.cache.present(r.sha256) for r in self.every_ref)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                k = self.next_k
            if self.resident():
                with self._cond:
                    self._wake_at = 1 << 62        # consumed() never wakes it
                    if not self._closed:
                        self._cond.wait(RESIDENT_WAKE_S)
                continue
            until = k + 1
            try:
                until = k + max(1, self._round(k) // 2)
            except RemoteError as e:    # the consumer meets it too, with its own deadline
                log.warning("read-ahead: %s", e)
            except Exception:           # noqa: BLE001 - never kill the thread; log it
                log.exception("read-ahead failed")
            with self._cond:            # a warm cache: wake again only halfway through it
                self._wake_at = until
                if self.next_k < until and not self._closed:
                    self._cond.wait_for(lambda u=until: self.next_k >= u or self._closed,
                                        IDLE_WAKE_S)

    def _covered(self, k: int) -> int:
        """How many micro-batches from k on have every shard in the cache (at most
        WARM_SCAN); 0 when micro-batch k itself lacks one. Each shard is looked up once."""
        known: dict[str, bool] = {}
        for j in range(k, k + WARM_SCAN):
            for r in self._micro_batch(j):
                if r.sha256 not in known:
                    known[r.sha256] = self.cache.present(r.sha256)
                if not known[r.sha256]:
                    return j - k
        return WARM_SCAN

    def _round(self, k: int) -> int:
        """Announce next uses (when something must be fetched, else every ANNOUNCE_EVERY
        micro-batches: a warm cache costs the loader nothing); fetch the shards of micro-batch k
        (all at once), then `depth` more in use order. Returns how many micro-batches ahead
        are covered by the cache (the thread sleeps through half of them)."""
        now = self._micro_batch(k)
        ahead = self._ahead(k, {r.sha256 for r in now})
        missing = [r for r in (*now, *(a for a, _ in ahead)) if not self.cache.present(r.sha256)]
        if missing or not self._announced_at <= k < self._announced_at + ANNOUNCE_EVERY:
            self.cache.announce(self._uses(k, now, ahead))
        if not missing:
            return self._covered(k)
        jobs = [self._pool.submit(self._fetch, ref, True) for ref in now
                if not self.cache.present(ref.sha256)]
        for job in jobs:
            job.result()
        for ref, _ in ahead:
            if self.next_k != k or self._closed:
                return 1
            if not self.cache.present(ref.sha256) and not self._fetch(ref, False):
                return 1                   # no room for read-ahead now: try again later
        return 1

    def _uses(self, k: int, now: list[ShardRef], ahead: list[tuple[ShardRef, int]]
              ) -> dict[str, int]:
        """shard -> step of its next use: micro-batch k's and the read-ahead's exactly, the
        rest from the long view (made every ANNOUNCE_EVERY micro-batches; its uses before
        this step are dropped: those shards' next use is not known until it is made again)."""
        if not self._horizon_at <= k < self._horizon_at + ANNOUNCE_EVERY:
            self._horizon, self._horizon_at = self._next_uses(k), k
        self._announced_at = k
        step = self.step_of(k)
        uses = {sha: s for sha, s in self._horizon.items() if s >= step}
        for ref, s in ahead:
            uses[ref.sha256] = min(s, uses.get(ref.sha256, s))
        uses.update((ref.sha256, step) for ref in now)
        return uses

    def _fetch(self, ref: ShardRef, urgent: bool) -> bool:
        """The read-ahead's fetch; an urgent one that waits for room ends within one cache poll
        (<= 0.25 s) of close(), which would otherwise wait out its 10 s join for it."""
        return self.cache.get(ref, pin=False, urgent=urgent,
                              cancelled=lambda: self._closed) is not None

    def _ahead(self, k: int, now: set[str]) -> list[tuple[ShardRef, int]]:
        """The next `depth` distinct shards after micro-batch k's, in first-use order, with
        the step of that use."""
        seen: OrderedDict[str, tuple[ShardRef, int]] = OrderedDict()
        want = min(self.depth, self.total_shards - len(now))
        for j in range(k + 1, k + self.horizon):
            if len(seen) >= want:
                break
            for ref in self._micro_batch(j):
                if ref.sha256 not in now:
                    seen.setdefault(ref.sha256, (ref, self.step_of(j)))
        return list(seen.values())[:self.depth]

    def _next_uses(self, k: int) -> dict[str, int]:
        """shard -> global step of its next use, from micro-batch k on, for as many shards as
        the cache holds (at most `horizon` micro-batches ahead)."""
        with self._cond:
            for old in [j for j in self._memo if j < k]:
                del self._memo[old]
        uses: dict[str, int] = {}
        capacity = min(self.total_shards,
                       max(self.depth + 1, self.cache.limit // max(1, self._avg_size(k))))
        for j in range(k, k + self.horizon):
            step = self.step_of(j)
            for ref in self._micro_batch(j):
                uses.setdefault(ref.sha256, step)
            if len(uses) >= capacity:
                break
        return uses

    def _avg_size(self, k: int) -> int:
        refs = self._micro_batch(k)
        return int(sum(r.size for r in refs) / len(refs)) if refs else 1


def train_feeder(src, dataset, horizon: int | None = None) -> Feeder | None:
    """The read-ahead of a rank's training micro-batches (`dataset`: its TrainMicroBatches),
    or None when no folder is in object storage. The schedule is computed on a view of the
    DataSource with memo tables of its own (the read-ahead runs in another thread)."""
    if getattr(src, "cache", None) is None:
        return None
    view = src.order_view()
    ds = copy.copy(dataset)
    ds.src = view
    per_step = ds.part.micro_per_step

    def samples(k: int) -> np.ndarray:
        step, m = divmod(k, per_step)
        return view.objective.train_samples(view, ds.first_step + step, m, ds.part)[0]

    total = sum(len(f.streams["train"].shards.refs) if not f.is_pairs else
                len(f.pairs["train"].shards.refs) for f in src.folders if f.remote)
    every = [ref for f in src.folders if f.remote
             for split in (f.pairs if f.is_pairs else f.streams).values()
             for ref in split.shards.refs]
    blocks = BlockShards(view, samples)
    return Feeder(src.cache, blocks, lambda k: ds.first_step + k // per_step,
                  src.config.prefetch_shards, total, horizon, every)


class BlockShards:
    """The shards of micro-batch k, computed for its whole block of BLOCK micro-batches at
    once (the last two blocks memoised)."""

    def __init__(self, view, samples: Callable[[int], np.ndarray]):
        self.view, self.samples = view, samples
        self.memo: dict[int, list[list[ShardRef]]] = {}

    def __call__(self, k: int) -> list[ShardRef]:
        b = k // BLOCK
        if b not in self.memo:
            if len(self.memo) >= 2:
                self.memo.pop(min(self.memo))
            self.memo[b] = [shards_of_samples(self.view, "train", self.samples(j))
                            for j in range(b * BLOCK, (b + 1) * BLOCK)]
        return self.memo[b][k - b * BLOCK]


class FedBatches:
    """A batch iterator that tells its Feeder which micro-batch was handed out."""

    def __init__(self, batches, feeder: Feeder):
        self.batches, self.feeder, self.k = batches, feeder, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        self.feeder.consumed(self.k)
        self.k += 1
        return batch

    def close(self) -> None:
        self.feeder.close()
