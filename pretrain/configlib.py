"""Config mechanics shared by every section: YAML with `base:` inheritance, dotted-key
overrides, strict pydantic sections, and one error that lists every problem.

A mapping anywhere in a YAML file may carry `base: other.yaml` (a path relative to that file);
the mapping is then the referenced file's content with this mapping's keys merged over it. So a
run file may say `base: demo.yaml` at the top and `model: {base: model/gpt2-124m.yaml}` inside.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

BASE_KEY = "base"


class ConfigError(ValueError):
    """All problems found in a config, reported together."""

    def __init__(self, problems: Iterable[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} config problem(s){where}:\n{lines}")


class Section(BaseModel):
    """Base for typed config sections: unknown keys are errors, values are validated on
    assignment too, so a config stays valid after it is changed in code."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read config file: {e.strerror}"], str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"invalid YAML:{line} {problem}"], str(path)) from None


def _resolve_bases(node: Any, here: Path, stack: tuple[Path, ...]) -> Any:
    if isinstance(node, list):
        return [_resolve_bases(v, here, stack) for v in node]
    if not isinstance(node, Mapping):
        return node
    node = {k: _resolve_bases(v, here, stack) for k, v in node.items()}
    if BASE_KEY not in node:
        return node
    ref = node.pop(BASE_KEY)
    if not isinstance(ref, str):
        raise ConfigError([f"'{BASE_KEY}' must be a file path, got {ref!r}"], str(here))
    base_path = (here.parent / ref).resolve()
    if base_path in stack:
        chain = " -> ".join(str(p) for p in (*stack, base_path))
        raise ConfigError([f"'{BASE_KEY}' files form a cycle: {chain}"], str(here))
    if not base_path.is_file():
        raise ConfigError([f"'{BASE_KEY}: {ref}' names no file ({base_path})"], str(here))
    base = load_yaml(base_path, _stack=(*stack, base_path))
    return deep_merge(base, node)


def load_yaml(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping and resolve every `base:` in it."""
    path = Path(path).resolve()
    data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], str(path))
    return _resolve_bases(data, path, _stack or (path,))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML: 3 -> int, true -> bool, ...)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} is not of the form dotted.key=value"])
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError([f"override {text!r} has an empty key part"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set. Unknown keys are left for the
    typed sections to reject, so every problem is reported in one place."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error, naming the dotted key."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{loc or '(top level)'}: {msg}")
    return lines


T = TypeVar("T", bound=BaseModel)


def validate_section(cls: type[T], data: Any, prefix: str = "",
                     source: str | None = None) -> T:
    """Build `cls` from `data`, raising ConfigError that lists every problem."""
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix), source) from None


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
