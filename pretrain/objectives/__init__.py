"""Training objectives (docs/design.md §11): one module per objective, each with an `Objective`
subclass named `OBJECTIVE` (base.py says what an objective decides), and the registry
(registry.py). Adding an objective = one new module + one line in REGISTRY.

Above pretrain.data and pretrain.model, below pretrain.train. Imports without torch (the
pre-flight and the launchers use it): an objective's module is imported when it is asked for."""

from pretrain.objectives.base import EvalContext, Objective, SplitCounts
from pretrain.objectives.registry import (
    REGISTRY,
    DataSection,
    all_objectives,
    exactness_keys,
    get_objective,
    objective_for,
    open_data,
)

__all__ = ["REGISTRY", "DataSection", "EvalContext", "Objective", "SplitCounts",
           "all_objectives", "exactness_keys", "get_objective", "objective_for", "open_data"]
