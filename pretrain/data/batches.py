"""Training and validation batches as torch tensors, optionally through a torch DataLoader with
worker processes, prefetch and pinned memory — exact either way, because the k-th micro-batch of
a rank is a pure function of k (a map-style dataset over micro-batch numbers, read in order)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.data.layout import batch_layout_problem
from pretrain.data.prefetch import FedBatches, train_feeder
from pretrain.data.source import DataSource
from pretrain.data.stream import DataError


def _to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


class TrainMicroBatches(Dataset):
    """Micro-batch k of rank `rank`, counting from the step at `consumed_samples`.

    Global step s covers order positions [s*B, (s+1)*B); rank r takes [s*B + r*B/W, ... + B/W)
    and splits it into B/(W*micro) micro-batches in order.

    seq2seq: step s's B samples come sorted by length (DataSource.step_samples) and are cut
    into B/micro micro-batches g = 0, 1, ...; rank r takes g = r, r + W, r + 2W, ... (dealt
    round-robin, so every rank gets short and long ones alike). A micro-batch depends on
    (s, g, micro) only: the global batch is the same for any W."""

    def __init__(self, src: DataSource, global_batch: int, micro_batch: int, rank: int,
                 world: int, consumed_samples: int):
        check_layout(global_batch, micro_batch, rank, world)
        if consumed_samples < 0 or consumed_samples % global_batch:
            raise ValueError(f"consumed_samples={consumed_samples} is not a multiple of the "
                             f"global batch {global_batch}")
        self.src, self.micro = src, micro_batch
        self.global_batch, self.per_rank = global_batch, global_batch // world
        self.first_step, self.rank, self.world = consumed_samples // global_batch, rank, world

    def positions(self, k: int) -> np.ndarray:
        step, m = divmod(k, self.per_rank // self.micro)
        start = (self.first_step + step) * self.global_batch + self.rank * self.per_rank
        return start + m * self.micro + np.arange(self.micro)

    def bucketed(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """seq2seq: (indices, epochs) of this rank's k-th micro-batch (see the class doc)."""
        step, m = divmod(k, self.per_rank // self.micro)
        g = m * self.world + self.rank
        index, epoch = self.src.step_samples(self.first_step + step, self.global_batch)
        mine = slice(g * self.micro, (g + 1) * self.micro)
        return index[mine], epoch[mine]

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if self.src.seq2seq:
            indices, epochs = self.bucketed(k)
        else:
            indices, epochs = self.src.order(self.positions(k))
        return _to_torch(self.src.batch("train", indices, epochs))

    def __len__(self) -> int:  # unused: the sampler is infinite
        raise TypeError("TrainMicroBatches is infinite")


class EvalMicroBatches(Dataset):
    """Micro-batches of the val split in index order (seq2seq: the same samples sorted by
    length); rank r takes every W-th one."""

    def __init__(self, src: DataSource, micro_batch: int, rank: int, world: int,
                 max_samples: int | None):
        n = src.num_samples("val") if max_samples is None else min(max_samples,
                                                                    src.num_samples("val"))
        self.src, self.micro, self.rank, self.world = src, micro_batch, rank, world
        self.num_batches = n // (micro_batch * world)   # equal on every rank (ZeRO-3 safe)
        if self.num_batches == 0:
            raise DataError(f"the val split gives {n} samples, fewer than micro_batch "
                             f"{micro_batch} x world {world}: shard more validation data")
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
    worker's traceback)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, k: int):
        try:
            return self.dataset[k]
        except DataError as e:
            return {_ERROR_KEY: str(e)}


_ERROR_KEY = "data_error"


def _iterate(dataset: Dataset, sampler, num_workers: int, pin_memory: bool,
             prefetch_factor: int) -> Iterator[dict[str, torch.Tensor]]:
    if num_workers == 0:
        for k in sampler:
            yield dataset[k]
        return
    loader = DataLoader(_CarryErrors(dataset), batch_size=None, sampler=sampler,
                        num_workers=num_workers, prefetch_factor=prefetch_factor,
                        persistent_workers=False,
                        pin_memory=pin_memory and torch.cuda.is_available())
    for batch in loader:
        if _ERROR_KEY in batch:
            raise DataError(batch[_ERROR_KEY])
        yield batch


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
