"""Streaming loader over Arrow token shards: computed global shuffle, mixtures, rank slices and
exact resume from `consumed_samples` (docs/design.md §3, §9). What a sample is (packed windows,
T5 span corruption, padded pairs) is the objective's: `pretrain.objectives.open_data` opens a
DataSource for one.

`DataConfig` imports without torch (the launchers validate configs before any rank starts);
the loader itself is imported on first use."""

from pretrain import lazy_attributes
from pretrain.data.config import DataConfig, MixEntry

_LAZY = {"eval_batches": "pretrain.data.batches", "train_batches": "pretrain.data.batches",
         "DataError": "pretrain.data.stream", "DataSource": "pretrain.data.source"}

__all__ = ["DataConfig", "DataError", "DataSource", "MixEntry", "eval_batches", "train_batches"]

__getattr__ = lazy_attributes(__name__, _LAZY)
