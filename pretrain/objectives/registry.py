"""The registry of training objectives: data.objective names to their modules, and the run
config's data section checked against it. Imports no objective module until one is asked for
(importlib), and no torch."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pretrain.data.config import DataConfig

if TYPE_CHECKING:
    from pretrain.data.source import DataSource

# The Objective classes (base.py) are not imported here: base.py asks this registry which
# objectives read a folder kind, so the registry names them by module and type-annotates them
# loosely (`type` / `Any`), keeping the imports one-way.

REGISTRY = {  # data.objective -> the module holding its OBJECTIVE
    "clm": "pretrain.objectives.clm",
    "span_corruption": "pretrain.objectives.span_corruption",
    "seq2seq": "pretrain.objectives.seq2seq",
}

ObjectiveName = Literal[tuple(REGISTRY)]  # type: ignore[valid-type]


@cache
def get_objective(name: str) -> type:
    """The Objective subclass registered as `name` (KeyError naming the known ones)."""
    if name not in REGISTRY:
        raise KeyError(f"data.objective {name!r} is not one of {', '.join(REGISTRY)}")
    return import_module(REGISTRY[name]).OBJECTIVE


def all_objectives() -> list[type]:
    return [get_objective(name) for name in REGISTRY]


def objective_for(data: DataConfig) -> Any:
    """A fresh objective for `data` (not opened on any data: no loader state)."""
    return get_objective(data.objective)(data)


def exactness_keys() -> tuple[str, ...]:
    """The data keys that decide which sample comes at which position, for any objective (a
    resume refuses a change of any of them, as it always has)."""
    return tuple(dict.fromkeys(k for o in all_objectives() for k in o.exactness_keys))


def open_data(cfg: DataConfig, seed: int) -> DataSource:
    """Open and check every shard folder of `cfg` for its objective (raises DataError naming
    folder/file). `seed` (the run seed) keys the training order and the span-corruption noise."""
    from pretrain.data.source import DataSource

    return DataSource(cfg, seed, objective_for(cfg))


class DataSection(DataConfig):
    """The `data` section of a run config: the loader's DataConfig whose objective is a
    registered one, with the keys it needs (checked with the section, before any other)."""

    objective: ObjectiveName = Field(
        "clm", description="clm: next-token prediction on packed documents (decoder); "
        "span_corruption: T5's objective on documents (encdec); seq2seq: source -> target "
        "pairs of a pair folder (encdec), e.g. translation")

    def problems(self) -> list[str]:
        return get_objective(self.objective).required_problems(self) + super().problems()
