"""The trainer on the DeepSpeed engine. `python -m pretrain.train --config ...` runs one rank.

Public API: `RunConfig`, `load_run_config` (validate a run config before starting processes),
`unigram_entropy` (what a trained model's loss must beat)."""

from pretrain.train.config import RunConfig, load_run_config
from pretrain.train.stats import UnigramEntropy, unigram_entropy

__all__ = ["RunConfig", "UnigramEntropy", "load_run_config", "unigram_entropy"]
