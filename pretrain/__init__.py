"""arrowtrain pretraining: models, the Arrow shard loader and the DeepSpeed trainer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

__version__ = "0.1.0"


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A package's module `__getattr__` that imports NAME from module `table[NAME]` on first use
    (and keeps it): `pretrain.data.DataSource` costs nothing until it is used, so the launchers
    can import a package's config without torch."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(table[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
