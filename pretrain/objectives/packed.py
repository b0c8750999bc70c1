"""Objectives on document folders: the split's packed stream (each document followed by EOS,
docs/design.md §3) cut into windows of `window.tokens` tokens every `window.stride` tokens."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_tools.split import more_val_hint
from pretrain.data.layout import samples_in_stream, stream_tokens_for
from pretrain.objectives.base import Objective, SplitCounts

if TYPE_CHECKING:
    from pretrain.data.source import DataSource


@dataclass(frozen=True)
class Window:
    """The stream tokens one sample takes: `tokens` of them, one sample every `stride`."""

    tokens: int
    stride: int
    why: str  # what sets it, for messages ("data.seq_len + 1")


class PackedObjective(Objective):
    folder_kind = "documents"

    @property
    @abstractmethod
    def window(self) -> Window:
        """Tokens per sample and stride (needs the required keys)."""

    def samples(self, counts: SplitCounts) -> int:
        return samples_in_stream(counts.stream_tokens, self.window.tokens, self.window.stride)

    def too_few(self, folder: Path | str, split: str, counts: SplitCounts) -> str:
        w = self.window
        return (f"the {split} split of {folder} holds {counts.stream_tokens} tokens (EOS "
                f"included), fewer than one sample of {w.tokens} ({w.why})")

    def more_val_hint(self, samples: int) -> str:
        """The wording of `shard`'s warning (data_tools.split.more_val_hint), with the tokens
        that make `samples` windows: --val-tokens N gives at least N stream tokens."""
        return more_val_hint(stream_tokens_for(samples, self.window.tokens, self.window.stride))

    def opened_counts(self, src: DataSource, k: int, split: str) -> SplitCounts:
        return SplitCounts(stream_tokens=src.folders[k].streams[split].stream_len)

    @property
    def sample_window(self) -> int:
        return self.window.tokens

    def file_spans(self, src: DataSource, split: str, k: int, within: np.ndarray
                   ) -> tuple[object, np.ndarray, np.ndarray]:
        stream = src.folders[k].streams[split]
        first, last = stream.file_ranges(np.asarray(within, np.int64) * self.window.stride,
                                         self.window.tokens)
        return stream.shards, first, last

    def windows(self, src: DataSource, split: str, folder: np.ndarray, within: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n, window), document ids (n, window)) of samples `within` of `folder`."""
        w = self.window
        if len(src.folders) == 1:
            return src.folders[0].streams[split].windows(within * w.stride, w.tokens)
        tokens = np.empty((len(within), w.tokens), src.folders[0].streams[split].dtype)
        docs = np.empty((len(within), w.tokens), np.int32)
        for k in np.unique(folder):
            sel = np.flatnonzero(folder == k)
            stream = src.folders[k].streams[split]
            tokens[sel], docs[sel] = stream.windows(within[sel] * w.stride, w.tokens)
        return tokens, docs
