"""Streaming loader over Arrow token shards: packing, T5 span corruption, computed global
shuffle, rank slices and exact resume from `consumed_samples` (docs/design.md §3, §9)."""

from pretrain.data.batches import eval_batches, train_batches
from pretrain.data.config import DataConfig, MixEntry
from pretrain.data.shards import DataError
from pretrain.data.source import DataSource, open_data

__all__ = ["DataConfig", "DataError", "DataSource", "MixEntry", "eval_batches", "open_data",
           "train_batches"]
