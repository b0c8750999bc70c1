"""Training and validation batches as torch tensors, optionally through a torch DataLoader with
worker processes, prefetch and pinned memory — exact either way, because the k-th micro-batch of
a rank is a pure function of k (a map-style dataset over micro-batch numbers, read in order)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.data.layout import RankSlice, batch_layout_problem, eval_batch_problem
from pretrain.data.prefetch import FedBatches, train_feeder
from pretrain.data.source import DataSource
from pretrain.data.stream import DataError


def _to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


class TrainMicroBatches(Dataset):
    """Micro-batch k of rank `rank`, counting from the step at `consumed_samples`: micro-batch
    k mod (B/(W*micro)) of step first_step + k div (B/(W*micro)), as the objective deals a
    step's samples to the ranks (Objective.train_samples: by default rank r takes the
    contiguous slice [s*B + r*B/W, ... + B/W) of the training order, in order)."""

    def __init__(self, src: DataSource, global_batch: int, micro_batch: int, rank: int,
                 world: int, consumed_samples: int):
        check_layout(global_batch, micro_batch, rank, world)
        if consumed_samples < 0 or consumed_samples % global_batch:
            raise ValueError(f"consumed_samples={consumed_samples} is not a multiple of the "
                             f"global batch {global_batch}")
        self.src, self.part = src, RankSlice(global_batch, micro_batch, rank, world)
        self.first_step = consumed_samples // global_batch

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        step, m = divmod(k, self.part.micro_per_step)
        indices, epochs = self.src.objective.train_samples(self.src, self.first_step + step, m,
                                                           self.part)
        return _to_torch(self.src.batch("train", indices, epochs))

    def __len__(self) -> int:  # unused: the sampler is infinite
        raise TypeError("TrainMicroBatches is infinite")


class EvalMicroBatches(Dataset):
    """Micro-batches of the val split in the objective's evaluation order (index order, or the
    same samples sorted by length); rank r takes every W-th one."""

    def __init__(self, src: DataSource, micro_batch: int, rank: int, world: int,
                 max_samples: int | None):
        val = src.num_samples("val")
        capped = max_samples is not None and max_samples < val
        n = max_samples if capped else val
        self.src, self.micro, self.rank, self.world = src, micro_batch, rank, world
        self.num_batches = n // (micro_batch * world)   # equal on every rank (ZeRO-3 safe)
        problem = eval_batch_problem("eval.max_samples" if capped else
                                     "the val split's sample count", n, micro_batch, world)
        if problem:
            raise DataError(f"{problem}: " + ("raise it" if capped else
                                              src.objective.more_val_hint(micro_batch * world)))
        self.order = src.val_order(self.num_batches * micro_batch * world)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        first = (k * self.world + self.rank) * self.micro
        indices = self.order[first:first + self.micro]
        return _to_torch(self.src.batch("val", indices, np.zeros_like(indices)))


class _Counting(Sampler):
    def __iter__(self):
        return itertools.count()


def check_layout(global_batch: int, micro_batch: int, rank: int, world: int) -> None:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    problem = batch_layout_problem(global_batch, micro_batch, world)
    if problem:
        raise ValueError(problem)


class _CarryErrors(Dataset):
    """In a DataLoader worker, a DataError comes back as a batch holding only its message, so
    the main process raises it with that one message (torch would re-raise it wrapped in the
    worker's traceback). `closing` is set by the main process when it stops reading: a worker
    waiting in the node cache (s3:// data) then gives up at once, so that torch's shutdown does
    not wait out its 5 s join per worker and then kill it."""

    def __init__(self, dataset: Dataset, closing):
        self.dataset, self.closing = dataset, closing

    def __getitem__(self, k: int):
        try:
            return self.dataset[k]
        except DataError as e:
            return {_ERROR_KEY: str(e)}


def _arm_worker(worker_id: int) -> None:
    """worker_init_fn: the worker's copy of the node cache watches its loader's `closing`."""
    wrapped = torch.utils.data.get_worker_info().dataset
    cache = getattr(getattr(wrapped.dataset, "src", None), "cache", None)
    if cache is not None:
        cache.closing = wrapped.closing.is_set


_ERROR_KEY = "data_error"


def _iterate(dataset: Dataset, sampler, num_workers: int, pin_memory: bool,
             prefetch_factor: int) -> Iterator[dict[str, torch.Tensor]]:
    if num_workers == 0:
        for k in sampler:
            yield dataset[k]
        return
    closing = torch.multiprocessing.Event()
    loader = DataLoader(_CarryErrors(dataset, closing), batch_size=None, sampler=sampler,
                        num_workers=num_workers, prefetch_factor=prefetch_factor,
                        persistent_workers=False, worker_init_fn=_arm_worker,
                        pin_memory=pin_memory and torch.cuda.is_available())
    workers = iter(loader)  # a local: it (and its workers' shutdown) outlives the `finally`
    try:
        for batch in workers:
            if _ERROR_KEY in batch:
                raise DataError(batch[_ERROR_KEY])
            yield batch
    finally:
        closing.set()


def train_batches(src: DataSource, global_batch: int, micro_batch: int, rank: int, world: int,
                  consumed_samples: int = 0, num_workers: int | None = None,
                  pin_memory: bool | None = None,
                  prefetch_factor: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite micro-batches of this rank from `consumed_samples` on (a multiple of the
    global batch). Worker options default to the data config."""
    cfg = src.config
    dataset = TrainMicroBatches(src, global_batch, micro_batch, rank, world, consumed_samples)
    batches = _iterate(dataset, _Counting(),
                       cfg.num_workers if num_workers is None else num_workers,
                       cfg.pin_memory if pin_memory is None else pin_memory,
                       prefetch_factor or cfg.prefetch_factor)
    feeder = train_feeder(src, dataset)   # object storage: read-ahead in use order
    return batches if feeder is None else FedBatches(batches, feeder)


def eval_batches(src: DataSource, micro_batch: int, rank: int, world: int,
                 max_samples: int | None = None, num_workers: int = 0,
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """The val split in fixed order, every W-th micro-batch for rank r; finite, and the same
    number of micro-batches on every rank (a tail smaller than micro_batch x world is left out)."""
    check_layout(micro_batch * world, micro_batch, rank, world)
    dataset = EvalMicroBatches(src, micro_batch, rank, world, max_samples)
    return _iterate(dataset, range(len(dataset)), num_workers, src.config.pin_memory,
                    src.config.prefetch_factor)
