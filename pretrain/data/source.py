"""DataSource: the opened shard folders of a run, and samples as pure functions of
(split, sample index, epoch, seed).

Generic over the objective: folders, mixture and training order are here; the window, the
sample counts, the batches and the order's objective-specific part are the objective's
(pretrain.objectives, which opens a DataSource with `open_data`; this layer never imports it:
the objective is handed in)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from data_tools.manifest import SPLITS
from pretrain.data.config import DataConfig
from pretrain.data.order import BlockPermutation, Mixture, Permutation, derive_keys
from pretrain.data.remote_plan import open_cache, size_cache
from pretrain.data.shards import ShardFolder
from pretrain.data.stream import DataError

ORDER_BLOCK = 4096   # training-order positions computed together


class DataSource:
    """Shard folders opened for one run and one objective (a pretrain.objectives.Objective,
    opened on this source).

    Sample indices of a split run over the folders laid end to end (folder 0's samples first);
    `order(positions)` maps training order positions to (sample index, epoch)."""

    def __init__(self, cfg: DataConfig, seed: int, objective: Any, _verify: bool = True):
        self.config, self.seed, self.objective = cfg, int(seed), objective
        paths_weights = cfg.folders()
        self.weights = [w for _, w in paths_weights]
        self.cache = open_cache(cfg) if cfg.remote() else None   # s3:// folders: node cache
        self.folders = [ShardFolder(p, cfg.tokenizer if _verify else None, self.cache)
                        for p, _ in paths_weights]
        self._check_same_tokenizer()
        first = self.folders[0]
        self.vocab_size, self.eos_id, self.pad_id = first.vocab_size, first.eos_id, first.pad_id
        self.sentinel_ids, self.tokenizer_path = first.sentinel_ids, first.tokenizer_path
        kinds = [objective.kind_problem(f.folder, "pairs" if f.is_pairs else "documents")
                 for f in self.folders]
        problems = [p for p in kinds if p] or objective.check(self)
        if problems:
            raise DataError("; ".join(problems))
        objective.open(self)
        if self.cache is not None:     # the limit against one step, this process's share
            size_cache(self.cache, cfg, [f.manifest for f in self.folders if f.remote],
                       objective.sample_window,
                       max(f.tokenizer_bytes for f in self.folders if f.remote))
        self._counts = {s: np.array([self._folder_samples(k, s) for k in range(len(self.folders))])
                        for s in SPLITS}
        self._bases = {s: np.concatenate([[0], np.cumsum(c)]) for s, c in self._counts.items()}
        try:
            self.mixture = Mixture(self.weights)
        except ValueError as e:
            raise DataError(f"data.path: {e}") from None
        self._perms: dict[tuple[int, int], Permutation] = {}
        self._order_blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ---- checks -------------------------------------------------------------------------
    def _check_same_tokenizer(self) -> None:
        first = self.folders[0]
        for f in self.folders[1:]:
            a, b = first.manifest, f.manifest
            if (a.tokenizer.sha256, a.dtype) != (b.tokenizer.sha256, b.dtype):
                raise DataError(f"{f.folder}: written with another tokenizer or dtype than "
                                f"{first.folder}; mixed folders must share one tokenizer")

    def _folder_samples(self, k: int, split: str) -> int:
        counts = self.objective.opened_counts(self, k, split)
        n = self.objective.samples(counts)
        if n < 1:
            raise DataError(self.objective.too_few(self.folders[k].folder, split, counts))
        return n

    # ---- the contract ---------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if len(self.folders) == 1:
            return self.folders[0].fingerprint
        parts = [[f.fingerprint, round(w, 12)] for f, w in zip(self.folders, self.weights)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def num_samples(self, split: str) -> int:
        return int(self._bases[split][-1])

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 text bytes per stream token (EOS included: the tokens the loss averages over);
        bits per byte = loss_nats / ln(2) / bytes_per_token."""
        text = sum(f.text_bytes(split) for f in self.folders)
        tokens = sum(f.streams[split].stream_len for f in self.folders)
        return text / tokens

    def sample(self, split: str, index: int, epoch: int = 0) -> dict[str, np.ndarray]:
        batch = self.batch(split, np.array([index]), np.array([epoch]))
        return {k: v[0] for k, v in batch.items()}

    # ---- order ------------------------------------------------------------------------------
    def _perm(self, folder: int, epoch: int) -> Permutation:
        key = (folder, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            n, per_block = int(self._counts["train"][folder]), self._block_samples(folder)
            self._perms[key] = (
                BlockPermutation(n, per_block, ("order", self.seed, folder, epoch, per_block))
                if per_block else Permutation(n, derive_keys("order", self.seed, folder, epoch)))
        return self._perms[key]

    def _block_samples(self, folder: int) -> int:
        """Training samples per shuffle block of `folder` (data.shuffle_block_shards shard
        files' worth; 0: a global shuffle)."""
        shards = self.config.block_shards()
        if not shards:
            return 0
        f = self.folders[folder]
        files = len((f.pairs if f.is_pairs else f.streams)["train"].shards.sizes)
        n = int(self._counts["train"][folder])
        return max(1, -(-n * shards // max(1, files)))

    def order(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training order: positions (n,) -> (train sample index (n,), epoch (n,)).
        Single folder: epoch = position // num_samples, then a permutation keyed by
        (seed, epoch), global or within blocks of shards (data.shuffle_block_shards).
        Mixtures: each folder runs through its own epochs.

        Computed ORDER_BLOCK positions at a time (a micro-batch's positions are contiguous)
        and the last blocks memoised: O(1) memory, the per-call numpy overhead amortised."""
        positions = np.asarray(positions, np.int64)
        block, offset = np.divmod(positions, ORDER_BLOCK)
        index, epoch = np.empty_like(positions), np.empty_like(positions)
        for b in np.unique(block).tolist():
            if b not in self._order_blocks:
                if len(self._order_blocks) >= 4:
                    self._order_blocks.pop(next(iter(self._order_blocks)))
                self._order_blocks[b] = self._order_block(b)
            sel = block == b
            index[sel], epoch[sel] = (a[offset[sel]] for a in self._order_blocks[b])
        return index, epoch

    def _order_block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        folder, count = self.mixture(np.arange(b * ORDER_BLOCK, (b + 1) * ORDER_BLOCK))
        n_k = self._counts["train"][folder]
        epoch, within = np.divmod(count, n_k)
        if self.config.shuffle:
            group = epoch * len(self.folders) + folder            # one (epoch, folder) each
            for g in np.unique(group).tolist():
                sel = group == g
                e, k = divmod(g, len(self.folders))
                within[sel] = self._perm(k, e)(within[sel])
        return self._bases["train"][folder] + within, epoch

    # ---- batches -----------------------------------------------------------------------------
    def locate(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices (n,) of `split` -> (folder (n,), index within the folder (n,))."""
        folder = np.searchsorted(self._bases[split], indices, "right") - 1
        return folder, indices - self._bases[split][folder]

    def batch(self, split: str, indices: np.ndarray, epochs: np.ndarray) -> dict[str, np.ndarray]:
        """Samples `indices` of `split` stacked: numpy arrays (n, ...) per docs/design.md §9."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples(split)):
            raise IndexError(f"{split} sample index out of range [0, {self.num_samples(split)})")
        folder, within = self.locate(split, indices)
        return self.objective.batch(self, split, folder, within, epochs)

    def val_order(self, n: int) -> np.ndarray:
        """The first n val samples in the order evaluation batches them (the objective's)."""
        return self.objective.val_order(self, n)

    def order_view(self) -> DataSource:
        """A copy sharing the opened folders with memo tables of its own, to compute the
        order in another thread (the read-ahead over object storage) beside this one."""
        view = object.__new__(type(self))      # not copy.copy: __setstate__ would reopen
        view.__dict__.update(self.__dict__)
        view._perms, view._order_blocks = {}, {}
        view.objective = view.objective.thread_copy()
        return view

    # ---- pickling for DataLoader workers: reopen by memory map, checks already done -------
    def __getstate__(self) -> dict:
        return {"config": self.config, "seed": self.seed, "objective": type(self.objective)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"], state["seed"], state["objective"](state["config"]),
                      _verify=False)
