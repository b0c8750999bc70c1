"""The trainer on the DeepSpeed engine. `python -m pretrain.train --config ...` runs one rank.

Public API: `RunConfig`, `load_run_config` (validate a run config before starting processes;
`pretrain.train.preflight.check_run` adds the checks against the data), `unigram_entropy` (what
a trained model's loss must beat). Names are imported on first use: importing a submodule (the
launchers' `distenv`, `preflight`) costs no more than that submodule, and never torch."""

from pretrain import lazy_attributes

_LAZY = {"RunConfig": "pretrain.train.config", "load_run_config": "pretrain.train.config",
         "UnigramEntropy": "pretrain.train.stats", "unigram_entropy": "pretrain.train.stats"}

__all__ = ["RunConfig", "UnigramEntropy", "load_run_config", "unigram_entropy"]

__getattr__ = lazy_attributes(__name__, _LAZY)
