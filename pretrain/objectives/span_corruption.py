"""span_corruption: T5's objective (Raffel et al. 2020) on an encoder-decoder. Documents are
packed as for clm into windows of the raw length whose corrupted inputs fit data.input_length
(pretrain.data.span); noise spans (density data.noise_density, mean length
data.mean_span_length) are replaced by sentinel ids in the inputs and spelled out after them in
the targets, padded to data.target_length (default: exactly what input_length needs). The noise
of a sample is keyed by (seed, folder, sample, epoch).

Resume is exact when data.input_length, data.target_length, data.noise_density and
data.mean_span_length are unchanged (with the seed, shuffle and folders)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pretrain.configlib import Problem
from pretrain.data.span import SpanLengths, corrupt, noise_mask, span_lengths
from pretrain.objectives.base import Batch, too_long
from pretrain.objectives.packed import PackedObjective, Window

if TYPE_CHECKING:
    from pretrain.data.source import DataSource


class SpanCorruption(PackedObjective):
    name = "span_corruption"
    family = "encdec"
    sample_key = "data.input_length"
    exactness_keys = ("data.input_length", "data.target_length", "data.noise_density",
                      "data.mean_span_length")
    required_keys = {"input_length": ""}

    @cached_property
    def span(self) -> SpanLengths:
        d = self.data
        return span_lengths(d.input_length, d.noise_density, d.mean_span_length)

    @cached_property
    def window(self) -> Window:
        return Window(self.span.raw_length, self.span.raw_length, "for data.input_length")

    @property
    def target_length(self) -> int:
        return self.data.target_length or self.span.targets_length

    @property
    def tokens_per_sample(self) -> int:
        return self.data.input_length

    def length_problems(self) -> list[Problem]:
        d, needed = self.data, self.span.targets_length
        if d.target_length is not None and d.target_length < needed:
            return [Problem(f"data.target_length ({d.target_length}) is too short: input_length "
                            f"{d.input_length} at noise_density {d.noise_density} needs "
                            f"{needed}", ("data.target_length",))]
        return []

    def model_problems(self, max_seq_len: int) -> list[Problem]:
        if problems := self.length_problems():
            return problems
        derived = frozenset({"data.target_length"} - {f"data.{k}"
                                                       for k in self.data.model_fields_set})
        return too_long({"data.input_length": self.data.input_length,
                         "data.target_length": self.target_length}, max_seq_len, derived)

    def folder_problems(self, folder: Path | str, sentinels: int) -> list[str]:
        spans = self.span.num_spans
        if sentinels >= spans:
            return []
        return [f"span corruption with input_length {self.data.input_length} needs {spans} "
                f"sentinel ids, the tokenizer of {folder} has {sentinels} (train it with "
                "--sentinels)"]

    def batch(self, src: DataSource, split: str, folder: np.ndarray, within: np.ndarray,
              epochs: np.ndarray) -> Batch:
        tokens = self.windows(src, split, folder, within)[0].astype(np.int64)  # (n, raw)
        epochs, n = np.asarray(epochs, np.int64), len(tokens)
        s_len, t_len = self.data.input_length, self.target_length
        inputs = np.full((n, s_len), src.pad_id, np.int64)
        targets = np.full((n, t_len), -100, np.int64)
        sentinels = np.asarray(src.sentinel_ids, np.int64)
        for i in range(n):
            rng = np.random.default_rng([src.seed, int(folder[i]), int(within[i]),
                                         int(epochs[i])])
            inp, tgt = corrupt(tokens[i], noise_mask(rng, self.span), sentinels, src.eos_id)
            inputs[i, : len(inp)], targets[i, : len(tgt)] = inp, tgt
        decoder_inputs = np.full_like(targets, src.pad_id)
        decoder_inputs[:, 1:] = np.where(targets[:, :-1] == -100, src.pad_id, targets[:, :-1])
        real = np.arange(s_len) < self.span.inputs_length  # (S,) the same for every row
        return {"input_ids": inputs, "attention_mask": np.broadcast_to(real, inputs.shape).copy(),
                "decoder_input_ids": decoder_inputs, "targets": targets}


OBJECTIVE = SpanCorruption
