"""Training over s3:// data: the ranks agree, before each step, that its data is there.

Shards come from object storage through the node cache (pretrain.data.cache) with a read-ahead
per rank (pretrain.data.prefetch). Before every step each rank makes sure the shards of its
micro-batches for that step are in the cache — at once when the read-ahead did its work,
otherwise it waits, retrying failing requests — and then all ranks agree (one all-reduce of
four integers on a gloo group of its own: host memory only, no GPU synchronisation). If any
rank could not get its shards within `data.remote_timeout`, every rank stops at the same step
boundary: checkpoint, exit 75, and the SLURM requeue resumes later with nothing lost. The same
all-reduce sums the ranks' cache hits/misses and downloaded bytes for metrics.jsonl and W&B.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pretrain.data.prefetch import StepData, shards_of_samples

log = logging.getLogger("pretrain.train")


@dataclass
class Agreed:
    """The outcome of one step's data check, summed over ranks."""

    outage: bool
    wait_s: float            # this rank's wait
    hits: int
    misses: int
    remote_bytes: int        # downloaded by all ranks since the previous check
    error: str | None        # this rank's own error, if it had one


class RemoteData:
    """Step-boundary data agreement and the cache metrics of a run with s3:// folders."""

    def __init__(self, src, timeout_s: float):
        self.src, self.timeout_s = src, float(timeout_s)
        self.group = dist.new_group(backend="gloo")   # host-side; every rank calls this
        self._sent_bytes = 0
        self.hits = self.misses = 0                  # since the last metrics row (all ranks)
        self.remote_bytes = 0                        # since the start (all ranks)

    def _local_bytes(self) -> int:
        return self.src.cache.stats.remote_bytes

    def _agree(self, got: StepData) -> Agreed:
        now = self._local_bytes()
        flags = torch.tensor([0 if got.ok else 1, got.hits, got.misses, now - self._sent_bytes],
                             dtype=torch.int64)
        self._sent_bytes = now
        dist.all_reduce(flags, group=self.group)
        outage, hits, misses, nbytes = (int(x) for x in flags)
        self.hits, self.misses = self.hits + hits, self.misses + misses
        self.remote_bytes += nbytes
        return Agreed(outage > 0, got.wait_s, hits, misses, nbytes, got.error)

    def before_step(self, batches, step: int, first_step: int, per_step: int) -> Agreed:
        """The shards of this rank's micro-batches of global step index `step` (0-based),
        the iterator having started at `first_step`; then every rank's outcome."""
        feeder = getattr(batches, "feeder", None)
        if feeder is None:
            return self._agree(StepData(ok=True))
        k0 = (step - first_step) * per_step
        return self._agree(feeder.ensure(range(k0, k0 + per_step), self.timeout_s))

    def before_eval(self, indices: np.ndarray) -> Agreed:
        """The shards of this rank's validation samples `indices` (all of them)."""
        import time

        t0, got = time.monotonic(), StepData(ok=True)
        deadline = t0 + self.timeout_s
        for ref in shards_of_samples(self.src, "val", indices):
            present = self.src.cache.present(ref.sha256)
            got.hits, got.misses = got.hits + present, got.misses + (not present)
            if present:
                continue
            try:
                self.src.cache.get(ref, pin=False, urgent=True, deadline=deadline)
            except Exception as e:  # noqa: BLE001 - RemoteUnavailable, RemoteError: agreed on
                got.ok, got.error = False, str(e)
                break
        got.wait_s = time.monotonic() - t0
        return self._agree(got)

    def metrics(self) -> dict[str, float | int]:
        """cache_hit_rate since the previous row (shards found in the cache at the step
        check, all ranks) and remote_bytes since the start (all ranks)."""
        total = self.hits + self.misses
        row = {"cache_hit_rate": self.hits / total if total else 1.0,
               "remote_bytes": self.remote_bytes}
        self.hits = self.misses = 0
        return row


def eval_indices(src, micro_batch: int, rank: int, world: int,
                 max_samples: int | None) -> np.ndarray:
    """The val sample indices this rank's evaluation reads (as eval_batches deals them)."""
    from pretrain.data.batches import EvalMicroBatches

    ds = EvalMicroBatches(src, micro_batch, rank, world, max_samples)
    parts = [ds.order[(k * world + rank) * micro_batch:][:micro_batch] for k in range(len(ds))]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
