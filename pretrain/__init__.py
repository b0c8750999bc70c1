"""arrowtrain pretraining: models, the Arrow shard loader and the DeepSpeed trainer."""

__version__ = "0.1.0"
