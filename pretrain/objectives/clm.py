"""clm: causal language modelling on a decoder. Documents are packed (each followed by EOS) into
windows of seq_len + 1 tokens, one every seq_len tokens; a sample's inputs are the first seq_len
of them and its targets the last seq_len (docs/design.md §3, §9). Evaluation adds val_bpb.

Resume is exact when data.seq_len is unchanged (with the seed, shuffle and folders every
objective keeps): sample i is a pure function of (split, i, seed)."""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from pretrain.configlib import Problem
from pretrain.objectives.base import Batch, EvalContext, too_long
from pretrain.objectives.packed import PackedObjective, Window

if TYPE_CHECKING:
    from pretrain.data.source import DataSource


class Clm(PackedObjective):
    name = "clm"
    family = "decoder"
    sample_key = "data.seq_len"
    exactness_keys = ("data.seq_len",)
    required_keys = {"seq_len": ""}

    @cached_property
    def window(self) -> Window:
        return Window(self.data.seq_len + 1, self.data.seq_len, "data.seq_len + 1")

    @property
    def tokens_per_sample(self) -> int:
        return self.data.seq_len

    def model_problems(self, max_seq_len: int) -> list[Problem]:
        return too_long({"data.seq_len": self.data.seq_len}, max_seq_len)

    def batch(self, src: DataSource, split: str, folder: np.ndarray, within: np.ndarray,
              epochs: np.ndarray) -> Batch:
        tokens, docs = self.windows(src, split, folder, within)  # (n, T + 1) each
        return {"input_ids": tokens[:, :-1].astype(np.int64),  # contiguous int64 copies:
                "targets": tokens[:, 1:].astype(np.int64),  # zero-copy to torch
                "doc_ids": np.ascontiguousarray(docs[:, :-1])}

    def eval_metrics(self, ctx: EvalContext, val_loss: float) -> dict[str, float]:
        """val_bpb: bits per UTF-8 byte of the val text (loss per stream token, EOS included)."""
        return {"val_bpb": val_loss / math.log(2) / ctx.src.bytes_per_token("val")}


OBJECTIVE = Clm
