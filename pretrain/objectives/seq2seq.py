"""seq2seq: source -> target pairs of a pair folder on an encoder-decoder (e.g. translation).

Sample i of a split is its i-th pair whose sides fit data.input_length / data.target_length
(EOS included; longer pairs are skipped and counted in `skipped_pairs`), padded to the batch's
longest source and target (docs/design.md §9). The training order is the same keyed permutation
as for documents; `step_samples` then sorts each pool of data.bucket_pool_batches global batches
by length and serves its batches in a keyed order, so a step is still a pure function of its
number, and its micro-batches are dealt round-robin to the ranks. Evaluation batches the val
pairs sorted by length and adds val_bleu; the trainer logs padding_fraction.

Resume is exact when data.input_length and data.target_length are unchanged (with the seed,
shuffle and folders). data.bucket_pool_batches also decides which pairs a step takes, but a
resume that changes it is not refused (it never was: train/resume.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.manifest import SPLITS
from pretrain.configlib import Problem
from pretrain.data.config import DataConfig
from pretrain.data.layout import RankSlice, eval_batch_problem
from pretrain.data.order import Permutation, derive_keys
from pretrain.objectives.base import Batch, EvalContext, Objective, SplitCounts, too_long

if TYPE_CHECKING:
    from pretrain.data.source import DataSource

POOLS_KEPT = 2  # sorted pools memoised (a step needs one; a resume, the next)
Lengths = tuple[np.ndarray, np.ndarray]  # (source (n,), target (n,)) tokens, EOS included


class Seq2Seq(Objective):
    name = "seq2seq"
    family = "encdec"
    folder_kind = "pairs"
    sample_key = "data.input_length"
    exactness_keys = ("data.input_length", "data.target_length")
    required_keys = {
        "input_length": " (the longest source, EOS included; longer pairs are skipped)",
        "target_length": " (the longest target, EOS included; longer pairs are skipped)"}

    def __init__(self, data: DataConfig):
        super().__init__(data)
        self.skipped_pairs: dict[str, int] = {}  # per split, once opened
        self._rows: dict[tuple[int, str], np.ndarray] = {}  # pairs that fit, per (folder, split)
        self._lens: dict[tuple[int, str], Lengths] = {}
        self._pools: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    # ---- config and checks ---------------------------------------------------------------------
    @property
    def tokens_per_sample(self) -> int:
        return self.data.input_length

    def model_problems(self, max_seq_len: int) -> list[Problem]:
        return too_long({"data.input_length": self.data.input_length,
                         "data.target_length": self.data.target_length}, max_seq_len)

    def eval_problems(self, eval_cfg: Any, micro_batch: int, world: int) -> list[Problem]:
        """val_bleu translates eval.bleu_samples pairs in evaluation batches."""
        if not eval_cfg.enabled or not eval_cfg.bleu_samples:
            return []
        problem = eval_batch_problem("eval.bleu_samples", eval_cfg.bleu_samples, micro_batch,
                                     world)
        return [Problem(f"{problem}: raise it to at least {micro_batch * world}, or set it to 0 "
                        "to turn val_bleu off", ("eval.bleu_samples", "train.micro_batch_size"))
                ] if problem else []

    # ---- sample counts -------------------------------------------------------------------------
    def samples(self, counts: SplitCounts) -> int:
        """The pairs that fit; the manifest does not say which do, so the pre-flight counts all
        (an upper bound: the loader refuses a split none of whose pairs fits)."""
        return counts.rows if counts.fitting_rows is None else counts.fitting_rows

    def too_few(self, folder: Path | str, split: str, counts: SplitCounts) -> str:
        if not counts.rows:
            return f"the {split} split of {folder} holds no pairs"
        return (f"{folder}: none of the {counts.rows} {split} pairs fits data.input_length "
                f"{self.data.input_length} / data.target_length {self.data.target_length} (EOS "
                "included): raise them")

    def opened_counts(self, src: DataSource, k: int, split: str) -> SplitCounts:
        return SplitCounts(rows=src.folders[k].pairs[split].num_pairs,
                           fitting_rows=len(self._rows[k, split]))

    # ---- the loader ----------------------------------------------------------------------------
    def open(self, src: DataSource) -> None:
        """The pairs that fit, per folder and split: their rows and (source, target) lengths,
        EOS included (the decoder's input has the start token where the target has EOS)."""
        d = self.data
        self.skipped_pairs = {split: 0 for split in SPLITS}
        for k, f in enumerate(src.folders):
            for split in SPLITS:
                pairs = f.pairs[split]
                src_len, tgt_len = pairs.source_len + 1, pairs.target_len + 1  # (P,), (P,)
                rows = np.flatnonzero((src_len <= d.input_length) & (tgt_len <= d.target_length))
                self._rows[k, split] = rows
                self._lens[k, split] = (src_len[rows].astype(np.int32),
                                        tgt_len[rows].astype(np.int32))
                self.skipped_pairs[split] += pairs.num_pairs - len(rows)

    def thread_copy(self) -> Seq2Seq:
        other = super().thread_copy()
        other._pools = {}
        return other

    def file_spans(self, src: DataSource, split: str, k: int, within: np.ndarray
                   ) -> tuple[object, np.ndarray, np.ndarray]:
        """One file per pair: the one holding its row."""
        pairs = src.folders[k].pairs[split]
        rows = self._rows[k, split][np.asarray(within, np.int64)]
        chunk = np.searchsorted(pairs.doc_base, rows, "right") - 1
        file = np.searchsorted(pairs.file_chunks, chunk, "right") - 1
        return pairs.shards, file, file

    def _lengths(self, split: str, folder: np.ndarray, within: np.ndarray) -> Lengths:
        src_len, tgt_len = np.empty(len(within), np.int64), np.empty(len(within), np.int64)
        for k in np.unique(folder).tolist():
            sel = folder == k
            a, b = self._lens[k, split]
            src_len[sel], tgt_len[sel] = a[within[sel]], b[within[sel]]
        return src_len, tgt_len

    def pair_lengths(self, src: DataSource, split: str, indices: np.ndarray) -> Lengths:
        """(source, target) lengths (n,) of samples `indices` of `split`, EOS included."""
        return self._lengths(split, *src.locate(split, np.asarray(indices, np.int64)))

    def batch(self, src: DataSource, split: str, folder: np.ndarray, within: np.ndarray,
              epochs: np.ndarray) -> Batch:
        """Pairs padded to the batch's longest source S and target T (docs/design.md §9)."""
        src_len, tgt_len = self._lengths(split, folder, within)  # (n,), (n,)
        S, T = int(src_len.max()), int(tgt_len.max())
        inputs = np.empty((len(within), S), np.int64)
        targets = np.empty((len(within), T), np.int64)
        for k in np.unique(folder).tolist():
            sel = np.flatnonzero(folder == k)
            rows = self._rows[k, split][within[sel]]
            pairs = src.folders[k].pairs[split]
            inputs[sel] = pairs.padded(rows, 0, S, src.pad_id, src.eos_id)  # source EOS pad
            targets[sel] = pairs.padded(rows, 1, T, -100, src.eos_id)  # target EOS -100
        decoder_inputs = np.full_like(targets, src.pad_id)  # pad_id starts the decoder (T5)
        decoder_inputs[:, 1:] = np.where(np.arange(1, T) < tgt_len[:, None], targets[:, :-1],
                                         src.pad_id)
        return {"input_ids": inputs, "attention_mask": np.arange(S) < src_len[:, None],
                "decoder_input_ids": decoder_inputs, "targets": targets}

    def step_samples(self, src: DataSource, step: int, global_batch: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
        """The (train sample index (B,), epoch (B,)) of global step `step`, sorted by length.
        The pool of K = bucket_pool_batches steps holding it covers training-order positions
        [pool*K*B, (pool+1)*K*B) (the same permutation as any objective); sorted by (longer
        side, both sides, position) and cut into K batches, which its K steps take in a keyed
        order. A pure function of (seed, step, B): exact resume, any number of ranks."""
        K = self.data.bucket_pool_batches
        pool, slot = divmod(step, K)
        key = (pool, global_batch)
        if key not in self._pools:
            if len(self._pools) >= POOLS_KEPT:
                self._pools.pop(next(iter(self._pools)))
            positions = np.arange(pool * K * global_batch, (pool + 1) * K * global_batch)
            index, epoch = src.order(positions)
            src_len, tgt_len = self.pair_lengths(src, "train", index)
            by_length = np.lexsort((positions, src_len + tgt_len, np.maximum(src_len, tgt_len)))
            batch_of_slot = Permutation(K, derive_keys("buckets", src.seed, pool))(np.arange(K))
            self._pools[key] = (index[by_length].reshape(K, global_batch),
                                epoch[by_length].reshape(K, global_batch), batch_of_slot)
        index, epoch, batch_of_slot = self._pools[key]
        b = int(batch_of_slot[slot])
        return index[b], epoch[b]

    def train_samples(self, src: DataSource, step: int, micro: int,
                      part: RankSlice) -> tuple[np.ndarray, np.ndarray]:
        """Step s's B samples come sorted by length (step_samples), cut into B/micro
        micro-batches g = 0, 1, ...; rank r takes g = r, r + W, r + 2W, ... (dealt round-robin,
        so every rank gets short and long ones alike). A micro-batch depends on (s, g, micro)
        only: the global batch is the same for any W."""
        g = micro * part.world + part.rank
        index, epoch = self.step_samples(src, step, part.global_batch)
        mine = slice(g * part.micro_batch, (g + 1) * part.micro_batch)
        return index[mine], epoch[mine]

    def val_order(self, src: DataSource, n: int) -> np.ndarray:
        """By length (less padding; the set of samples is the same)."""
        indices = np.arange(n)
        src_len, tgt_len = self.pair_lengths(src, "val", indices)
        return indices[np.lexsort((indices, src_len + tgt_len, np.maximum(src_len, tgt_len)))]

    # ---- the trainer ---------------------------------------------------------------------------
    def describe(self, src: DataSource) -> str:
        used = ", ".join(f"{split} {src.num_samples(split):,} pairs used, {n:,} skipped"
                         for split, n in self.skipped_pairs.items())
        return (f"seq2seq: {used}; longer pairs are skipped (data.input_length "
                f"{self.data.input_length}, data.target_length {self.data.target_length}, EOS "
                "included)")

    def step_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """Padded and all positions of a CPU batch, source and target together (counted on the
        host before the copy to the device: no device sync)."""
        mask, targets = batch["attention_mask"], batch["targets"]
        return {"padded": int((~mask).sum()) + int((targets == -100).sum()),
                "positions": mask.numel() + targets.numel()}

    def log_fields(self, counts: dict[str, int]) -> dict[str, float]:
        """padding_fraction: the padded share of rank 0's positions since the last row."""
        return {"padding_fraction": counts.get("padded", 0) / max(counts.get("positions", 0), 1)}

    def eval_metrics(self, ctx: EvalContext, val_loss: float) -> dict[str, float]:
        """val_bleu (rank 0) of the first eval.bleu_samples val pairs; 0 turns it off."""
        if not ctx.eval.bleu_samples:
            return {}
        from pretrain.objectives.bleu import val_bleu

        bleu = val_bleu(ctx.model, ctx.src, ctx.micro_batch, ctx.rank, ctx.world, ctx.device,
                        ctx.eval.bleu_samples, ctx.eval.bleu_beam, self.data.target_length,
                        zero3=ctx.zero3)
        return {} if bleu is None else {"val_bleu": bleu}


OBJECTIVE = Seq2Seq
