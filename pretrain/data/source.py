"""DataSource: the opened shard folders of a run, and samples as pure functions of
(split, sample index, epoch, seed).

seq2seq (pair folders): sample i of a split is its i-th pair whose sides fit `input_length` /
`target_length` (EOS included; longer pairs are skipped and counted in `skipped_pairs`). The
training order is the same keyed permutation as for documents; `step_samples` then sorts each
pool of `bucket_pool_batches` global batches by length and serves its batches in a keyed
order, so a step is still a pure function of its number (docs/design.md §9)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from pretrain.data.config import DataConfig
from pretrain.data.order import Mixture, Permutation, derive_keys
from pretrain.data.remote_plan import open_cache, size_cache
from pretrain.data.shards import SPLITS, DataError, ShardFolder
from pretrain.data.span import SpanLengths, corrupt, noise_mask, span_lengths

ORDER_BLOCK = 4096   # training-order positions computed together
POOLS_KEPT = 2       # seq2seq: sorted pools memoised (a step needs one; a resume, the next)


class DataSource:
    """Shard folders opened for one run.

    Sample indices of a split run over the folders laid end to end (folder 0's samples first);
    `order(positions)` maps training order positions to (sample index, epoch)."""

    def __init__(self, cfg: DataConfig, seed: int, _verify: bool = True):
        self.config, self.seed = cfg, int(seed)
        paths_weights = cfg.folders()
        self.weights = [w for _, w in paths_weights]
        self.cache = open_cache(cfg) if cfg.remote() else None   # s3:// folders: node cache
        self.folders = [ShardFolder(p, cfg.tokenizer if _verify else None, self.cache)
                        for p, _ in paths_weights]
        if self.cache is not None:
            size_cache(self.cache, cfg, [f.manifest for f in self.folders if f.remote])
        self._check_same_tokenizer()
        first = self.folders[0]
        self.vocab_size, self.eos_id, self.pad_id = first.vocab_size, first.eos_id, first.pad_id
        self.sentinel_ids, self.tokenizer_path = first.sentinel_ids, first.tokenizer_path
        self.span: SpanLengths | None = None
        self.seq2seq = cfg.objective == "seq2seq"
        self._check_kinds()
        self.skipped_pairs = {s: 0 for s in SPLITS}   # seq2seq: pairs too long, per split
        if cfg.objective == "clm":
            self.window, self.stride = cfg.seq_len + 1, cfg.seq_len
        elif self.seq2seq:
            self._select_pairs()
        else:
            self.span = self._span_lengths()
            self.window = self.stride = self.span.raw_length
        self._counts = {s: np.array([self._folder_samples(k, s) for k in range(len(self.folders))])
                        for s in SPLITS}
        self._bases = {s: np.concatenate([[0], np.cumsum(c)]) for s, c in self._counts.items()}
        try:
            self.mixture = Mixture(self.weights)
        except ValueError as e:
            raise DataError(f"data.path: {e}") from None
        self._perms: dict[tuple[int, int], Permutation] = {}
        self._order_blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._pools: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    # ---- checks -------------------------------------------------------------------------
    def _check_kinds(self) -> None:
        for f in self.folders:
            if self.seq2seq and not f.is_pairs:
                raise DataError(f"{f.folder}: a document folder; data.objective seq2seq needs a "
                                "pair folder (data_tools shard --source-field/--target-field "
                                "or --source-file/--target-file)")
            if f.is_pairs and not self.seq2seq:
                raise DataError(f"{f.folder}: a pair folder (source -> target); data.objective "
                                f"{self.config.objective} needs documents: use data.objective "
                                "seq2seq with an encoder-decoder")

    def _select_pairs(self) -> None:
        """The pairs that fit, per folder and split: their rows and (source, target) lengths,
        EOS included (the decoder's input has the start token where the target has EOS)."""
        cfg = self.config
        self._pair_rows: dict[tuple[int, str], np.ndarray] = {}
        self._pair_lens: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        for k, f in enumerate(self.folders):
            for split in SPLITS:
                pairs = f.pairs[split]
                src, tgt = pairs.source_len + 1, pairs.target_len + 1            # (P,), (P,)
                rows = np.flatnonzero((src <= cfg.input_length) & (tgt <= cfg.target_length))
                self._pair_rows[k, split] = rows
                self._pair_lens[k, split] = (src[rows].astype(np.int32),
                                             tgt[rows].astype(np.int32))
                self.skipped_pairs[split] += pairs.num_pairs - len(rows)
    def _check_same_tokenizer(self) -> None:
        first = self.folders[0]
        for f in self.folders[1:]:
            a, b = first.manifest, f.manifest
            if (a.tokenizer.sha256, a.dtype) != (b.tokenizer.sha256, b.dtype):
                raise DataError(f"{f.folder}: written with another tokenizer or dtype than "
                                f"{first.folder}; mixed folders must share one tokenizer")

    def _span_lengths(self) -> SpanLengths:
        cfg = self.config
        span = span_lengths(cfg.input_length, cfg.noise_density, cfg.mean_span_length)
        if cfg.target_length is not None and cfg.target_length < span.targets_length:
            raise DataError(f"data.target_length={cfg.target_length} is too short: "
                            f"input_length={cfg.input_length} at noise_density="
                            f"{cfg.noise_density} needs {span.targets_length}")
        if span.num_spans > len(self.sentinel_ids):
            raise DataError(f"{self.folders[0].folder}: span corruption with input_length="
                            f"{cfg.input_length} needs {span.num_spans} sentinel ids, the "
                            f"tokenizer has {len(self.sentinel_ids)} (train it with "
                            "--sentinels)")
        return span

    def _folder_samples(self, k: int, split: str) -> int:
        folder = self.folders[k]
        if self.seq2seq:
            n = len(self._pair_rows[k, split])
            if n < 1:
                raise DataError(f"{folder.folder}: none of the {folder.pairs[split].num_pairs} "
                                f"{split} pairs fits data.input_length {self.config.input_length}"
                                f" / data.target_length {self.config.target_length} (EOS "
                                "included): raise them")
            return n
        stream_len = folder.streams[split].stream_len
        n = (stream_len - self.window) // self.stride + 1 if stream_len >= self.window else 0
        if n < 1:
            raise DataError(f"{folder.folder}: the {split} split holds {stream_len} tokens "
                            f"(EOS included), fewer than one sample of {self.window}")
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
            n = int(self._counts["train"][folder])
            self._perms[key] = Permutation(n, derive_keys("order", self.seed, folder, epoch))
        return self._perms[key]

    def order(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training order: positions (n,) -> (train sample index (n,), epoch (n,)).
        Single folder: epoch = position // num_samples, then a permutation keyed by
        (seed, epoch). Mixtures: each folder runs through its own epochs.

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
    def batch(self, split: str, indices: np.ndarray, epochs: np.ndarray) -> dict[str, np.ndarray]:
        """Samples `indices` of `split` stacked: numpy arrays (n, ...) per docs/design.md §9."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples(split)):
            raise IndexError(f"{split} sample index out of range [0, {self.num_samples(split)})")
        folder = np.searchsorted(self._bases[split], indices, "right") - 1
        within = indices - self._bases[split][folder]
        if self.seq2seq:
            return self._pair_batch(split, folder, within)
        tokens, docs = self._windows(split, folder, within)                 # (n, window)
        if self.span is None:                 # contiguous int64 copies: zero-copy to torch
            return {"input_ids": tokens[:, :-1].astype(np.int64),
                    "targets": tokens[:, 1:].astype(np.int64),
                    "doc_ids": np.ascontiguousarray(docs[:, :-1])}
        return self._span_batch(tokens.astype(np.int64), folder, within,
                                np.asarray(epochs, np.int64))

    def _windows(self, split: str, folder: np.ndarray, within: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
        if len(self.folders) == 1:
            return self.folders[0].streams[split].windows(within * self.stride, self.window)
        tokens = np.empty((len(within), self.window), self.folders[0].streams[split].dtype)
        docs = np.empty((len(within), self.window), np.int32)
        for k in np.unique(folder):
            sel = np.flatnonzero(folder == k)
            stream = self.folders[k].streams[split]
            tokens[sel], docs[sel] = stream.windows(within[sel] * self.stride, self.window)
        return tokens, docs

    def _span_batch(self, tokens: np.ndarray, folder: np.ndarray, within: np.ndarray,
                    epochs: np.ndarray) -> dict[str, np.ndarray]:
        cfg, n = self.config, len(tokens)
        s_len = cfg.input_length
        t_len = cfg.target_length or self.span.targets_length
        inputs = np.full((n, s_len), self.pad_id, np.int64)
        targets = np.full((n, t_len), -100, np.int64)
        sentinels = np.asarray(self.sentinel_ids, np.int64)
        for i in range(n):
            rng = np.random.default_rng([self.seed, int(folder[i]), int(within[i]),
                                         int(epochs[i])])
            inp, tgt = corrupt(tokens[i], noise_mask(rng, self.span), sentinels, self.eos_id)
            inputs[i, : len(inp)], targets[i, : len(tgt)] = inp, tgt
        decoder_inputs = np.full_like(targets, self.pad_id)
        decoder_inputs[:, 1:] = np.where(targets[:, :-1] == -100, self.pad_id, targets[:, :-1])
        real = np.arange(s_len) < self.span.inputs_length          # (S,) same for every row
        return {"input_ids": inputs, "attention_mask": np.broadcast_to(real, inputs.shape).copy(),
                "decoder_input_ids": decoder_inputs, "targets": targets}

    # ---- seq2seq: pairs, lengths, length-bucketed steps ----------------------------------------
    def _lens(self, split: str, folder: np.ndarray, within: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        src, tgt = np.empty(len(within), np.int64), np.empty(len(within), np.int64)
        for k in np.unique(folder).tolist():
            sel = folder == k
            a, b = self._pair_lens[k, split]
            src[sel], tgt[sel] = a[within[sel]], b[within[sel]]
        return src, tgt

    def pair_lengths(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) lengths (n,) of seq2seq samples, EOS included."""
        indices = np.asarray(indices, np.int64)
        folder = np.searchsorted(self._bases[split], indices, "right") - 1
        return self._lens(split, folder, indices - self._bases[split][folder])

    def _pair_batch(self, split: str, folder: np.ndarray, within: np.ndarray
                    ) -> dict[str, np.ndarray]:
        """Pairs padded to the batch's longest source S and target T (docs/design.md §9)."""
        src_len, tgt_len = self._lens(split, folder, within)                # (n,), (n,)
        S, T = int(src_len.max()), int(tgt_len.max())
        inputs = np.empty((len(within), S), np.int64)
        targets = np.empty((len(within), T), np.int64)
        for k in np.unique(folder).tolist():
            sel = np.flatnonzero(folder == k)
            rows = self._pair_rows[k, split][within[sel]]
            pairs = self.folders[k].pairs[split]
            inputs[sel] = pairs.padded(rows, 0, S, self.pad_id, self.eos_id)      # src EOS pad
            targets[sel] = pairs.padded(rows, 1, T, -100, self.eos_id)            # tgt EOS -100
        decoder_inputs = np.full_like(targets, self.pad_id)   # pad_id starts the decoder (T5)
        decoder_inputs[:, 1:] = np.where(np.arange(1, T) < tgt_len[:, None], targets[:, :-1],
                                         self.pad_id)
        return {"input_ids": inputs, "attention_mask": np.arange(S) < src_len[:, None],
                "decoder_input_ids": decoder_inputs, "targets": targets}

    def step_samples(self, step: int, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
        """seq2seq: the (train sample index (B,), epoch (B,)) of global step `step`, sorted by
        length. The pool of K = bucket_pool_batches steps holding it covers training-order
        positions [pool*K*B, (pool+1)*K*B) (the same permutation as any objective); sorted by
        (longer side, both sides, position) and cut into K batches, which its K steps take in a
        keyed order. A pure function of (seed, step, B): exact resume, any number of ranks."""
        K = self.config.bucket_pool_batches
        pool, slot = divmod(step, K)
        key = (pool, global_batch)
        if key not in self._pools:
            if len(self._pools) >= POOLS_KEPT:
                self._pools.pop(next(iter(self._pools)))
            positions = np.arange(pool * K * global_batch, (pool + 1) * K * global_batch)
            index, epoch = self.order(positions)
            src, tgt = self.pair_lengths("train", index)
            by_length = np.lexsort((positions, src + tgt, np.maximum(src, tgt)))
            batch_of_slot = Permutation(K, derive_keys("buckets", self.seed, pool))(np.arange(K))
            self._pools[key] = (index[by_length].reshape(K, global_batch),
                                epoch[by_length].reshape(K, global_batch), batch_of_slot)
        index, epoch, batch_of_slot = self._pools[key]
        b = int(batch_of_slot[slot])
        return index[b], epoch[b]

    def val_order(self, n: int) -> np.ndarray:
        """The first n val samples in the order evaluation batches them: by length for seq2seq
        (less padding; the set of samples is the same), index order otherwise."""
        indices = np.arange(n)
        if not self.seq2seq:
            return indices
        src, tgt = self.pair_lengths("val", indices)
        return indices[np.lexsort((indices, src + tgt, np.maximum(src, tgt)))]

    def order_view(self) -> DataSource:
        """A copy sharing the opened folders with memo tables of its own, to compute the
        order in another thread (the read-ahead over object storage) beside this one."""
        view = object.__new__(type(self))      # not copy.copy: __setstate__ would reopen
        view.__dict__.update(self.__dict__)
        view._perms, view._order_blocks, view._pools = {}, {}, {}
        return view

    # ---- pickling for DataLoader workers: reopen by memory map, checks already done -------
    def __getstate__(self) -> dict:
        return {"config": self.config, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"], state["seed"], _verify=False)


def open_data(cfg: DataConfig, seed: int) -> DataSource:
    """Open and check every shard folder of `cfg` (raises DataError naming folder/file).
    `seed` (the run seed) keys the training order and the span-corruption noise."""
    return DataSource(cfg, seed)
