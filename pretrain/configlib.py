"""Config mechanics shared by every section: YAML with `base:` inheritance, dotted-key
overrides, strict pydantic sections, and one error that lists every problem.

A mapping anywhere in a YAML file may carry `base: other.yaml` (a path relative to that file);
the mapping is then the referenced file's content with this mapping's keys merged over it. So a
run file may say `base: demo.yaml` at the top and `model: {base: model/gpt2-124m.yaml}` inside.

Problems carry the dotted keys they concern, so the error can say which came from the command
line (`attribute`), and an unknown key names the closest known one ("did you mean `optim.lr`?").
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

BASE_KEY = "base"
COMMAND_LINE = "the command line"


@dataclass(frozen=True)
class Problem:
    """One config problem. `keys`: the dotted config keys it concerns; `origin`: None for the
    config file, else where it came from (COMMAND_LINE)."""

    text: str
    keys: tuple[str, ...] = ()
    origin: str | None = None


class ConfigError(ValueError):
    """All problems found in a config, reported together, grouped by where they came from."""

    def __init__(self, problems: Iterable[str | Problem], source: str | None = None):
        self.items = [p if isinstance(p, Problem) else Problem(str(p)) for p in problems]
        self.problems = [p.text for p in self.items]
        self.source = source
        super().__init__(self._render())

    def _label(self, origin: str | None) -> str:
        if origin is not None:
            return f"from {origin}"
        return f"in {self.source}" if self.source else "in the config"

    def _render(self) -> str:
        groups: dict[str | None, list[str]] = {}
        for p in sorted(self.items, key=lambda p: p.origin is not None):  # the file first
            groups.setdefault(p.origin, []).append(p.text)
        head = f"{len(self.items)} config problem(s)"
        if len(groups) == 1:
            (origin, texts), = groups.items()
            where = f" {self._label(origin)}" if origin is not None or self.source else ""
            return f"{head}{where}:\n" + "\n".join(f"  - {t}" for t in texts)
        lines = [f"{head}:"]
        for origin, texts in groups.items():
            lines += [f"  {self._label(origin)}:", *(f"    - {t}" for t in texts)]
        return "\n".join(lines)


class Section(BaseModel):
    """Base for typed config sections: unknown keys are errors, values are validated on
    assignment too, so a config stays valid after it is changed in code; no float setting is
    infinite or NaN (`optim.lr: .inf` would pass `> 0` and fail at the second step)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---- the one YAML reader: bounded and strict -----------------------------------------------
# A config is a few hundred values a few levels deep. These bounds leave legitimate files far
# inside them and stop what would otherwise exhaust memory or the stack: a "billion laughs"
# (aliases of aliases: 9 levels of 9 expand to 387 million values), thousands of nested
# brackets (a RecursionError), or a file that never ends (/dev/zero).
MAX_YAML_BYTES = 4 << 20
MAX_YAML_DEPTH = 100  # nested sequences/mappings, aliases expanded
MAX_YAML_ALIASES = 1000
MAX_YAML_VALUES = 100_000  # scalars + collections once every alias is expanded


class StrictYAMLError(yaml.MarkedYAMLError):
    """A YAML document this reader refuses: a duplicate key, or past one of the bounds above."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and documents past the bounds above."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = self._aliases = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise StrictYAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name)", mark)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise StrictYAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _measure(node, 1, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges; its keys may be overridden here
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise StrictYAMLError(f"duplicate key {key!r} (first at line "
                                          f"{seen[key].line + 1}); a key may appear once per "
                                          "mapping", key_node.start_mark)
                seen.setdefault(key, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _measure(node, depth: int, memo: dict[int, tuple[int, int]], open_: set[int]
             ) -> tuple[int, int]:
    """(values, height) of `node` with every alias expanded, memoized per node (so a billion
    laughs is measured in a few steps); StrictYAMLError past the bounds or on a cycle."""
    key = id(node)
    if key in open_:
        raise StrictYAMLError("an alias refers to a collection that contains it", node.start_mark)
    if key not in memo:
        if depth > MAX_YAML_DEPTH:
            raise StrictYAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep (aliases "
                                  "expanded)", node.start_mark)
        children = [c for pair in node.value for c in pair] if isinstance(
            node, yaml.MappingNode) else node.value if isinstance(node, yaml.SequenceNode) else []
        open_.add(key)
        sizes = [_measure(c, depth + 1, memo, open_) for c in children]
        open_.discard(key)
        memo[key] = (1 + sum(n for n, _ in sizes), 1 + max((h for _, h in sizes), default=0))
    values, height = memo[key]
    if values > MAX_YAML_VALUES:
        raise StrictYAMLError(f"expands to more than {MAX_YAML_VALUES} values through its "
                              "aliases (*name); a config needs far fewer", node.start_mark)
    if depth + height - 1 > MAX_YAML_DEPTH:
        raise StrictYAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep (aliases "
                              "expanded)", node.start_mark)
    return values, height


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with the bounds above (yaml.YAMLError, StrictYAMLError among
    them, on anything refused). Every YAML the toolkit reads goes through here."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return f"{'YAML refused' if isinstance(e, StrictYAMLError) else 'invalid YAML'}:{line} " \
        f"{problem}"


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content (no `base:` resolution), read up to MAX_YAML_BYTES; ConfigError
    naming the file (and line) on anything unreadable, invalid or refused."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError([f"cannot read config file: {e.strerror}"], str(path)) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError([f"larger than {MAX_YAML_BYTES >> 20} MiB: not a config file"],
                          str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})"],
                          str(path)) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(e)], str(path)) from None


def _resolve_bases(node: Any, here: Path, stack: tuple[Path, ...], loads: list[Path]) -> Any:
    if isinstance(node, list):
        return [_resolve_bases(v, here, stack, loads) for v in node]
    if not isinstance(node, Mapping):
        return node
    node = {k: _resolve_bases(v, here, stack, loads) for k, v in node.items()}
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
    loads.append(base_path)
    if len(loads) > MAX_BASE_FILES:
        raise ConfigError([f"'{BASE_KEY}:' files are read more than {MAX_BASE_FILES} times "
                           "for one config"], str(here))
    base = load_yaml(base_path, _stack=(*stack, base_path), _loads=loads)
    return deep_merge(base, node)


MAX_BASE_FILES = 100  # `base:` reads for one config (each mapping may name one)


def load_yaml(path: str | Path, _stack: tuple[Path, ...] = (),
              _loads: list[Path] | None = None) -> dict[str, Any]:
    """Read a YAML mapping and resolve every `base:` in it."""
    path = Path(path).resolve()
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], str(path))
    return _resolve_bases(data, path, _stack or (path,), [] if _loads is None else _loads)


@dataclass(frozen=True)
class Override:
    """One `dotted.key=value` from the command line."""

    text: str
    parts: tuple[str, ...]
    value: Any

    @property
    def key(self) -> str:
        return ".".join(self.parts)


def parse_override(text: str) -> Override:
    """`a.b.c=value` -> key parts ("a", "b", "c") and the value parsed as YAML (3 -> int,
    true -> bool, ...). Raises ConfigError naming the override."""
    if "=" not in text:
        raise ConfigError([Problem(f"override {text!r} is not of the form dotted.key=value",
                                   origin=COMMAND_LINE)])
    key, _, raw = text.partition("=")
    parts = tuple(p.strip() for p in key.strip().split("."))
    if not all(parts):
        raise ConfigError([Problem(f"override {text!r} has an empty key part",
                                   origin=COMMAND_LINE)])
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except StrictYAMLError as e:
        raise ConfigError([Problem(f"override {text[:80]!r}: {_yaml_problem(e)}",
                                   origin=COMMAND_LINE)]) from None
    except yaml.YAMLError:
        value = raw
    return Override(text, parts, value)


def parse_overrides(texts: Iterable[str]) -> tuple[list[Override], list[Problem]]:
    """Every well-formed override, and a problem for each malformed one (none hides another)."""
    parsed, problems = [], []
    for text in texts:
        try:
            parsed.append(parse_override(text))
        except ConfigError as err:
            problems += err.items
    return parsed, problems


def apply_overrides(data: dict[str, Any], overrides: Iterable[str | Override]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set. Unknown keys are left for the
    typed sections to reject, so every problem is reported in one place; malformed overrides
    raise one ConfigError listing them all."""
    overrides = list(overrides)
    parsed, problems = parse_overrides(o for o in overrides if isinstance(o, str))
    if problems:
        raise ConfigError(problems)
    parsed += [o for o in overrides if isinstance(o, Override)]
    out = copy.deepcopy(data)
    for o in parsed:
        node = out
        for part in o.parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[o.parts[-1]] = o.value
    return out


def _present(data: Any, key: str) -> bool:
    """Whether the file's mapping holds `key` (True where a list or union tag makes it
    unknowable)."""
    node = data
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def attribute(problems: Iterable[Problem], overrides: Iterable[Override],
              file_data: Mapping[str, Any] | None = None) -> list[Problem]:
    """Tell which problems came from the command line. A key came from there when an override
    set it (or a mapping above it), or when only overrides below it created it (`file_data`:
    the YAML before overrides). A problem whose every key came from the command line moves to
    that group, naming the overrides; one that merely involves an override says so."""
    overrides = list(overrides)

    def setters(key: str) -> list[Override]:
        hits = [o for o in overrides if key == o.key or key.startswith(o.key + ".")]
        if hits:
            return hits[-1:]  # the last one wins
        below = [o for o in overrides if o.key.startswith(key + ".")]
        return below if below and file_data is not None and not _present(file_data, key) else []

    out = []
    for p in problems:
        if p.origin is not None or not p.keys:
            out.append(p)
            continue
        direct = [setters(k) for k in p.keys]
        if all(direct):
            named = ", ".join(dict.fromkeys(f"`{o.text}`" for d in direct for o in d))
            out.append(dataclasses.replace(p, text=f"{p.text} (from {named})",
                                           origin=COMMAND_LINE))
            continue
        involved = [o for d in direct for o in d]
        involved += [o for o in overrides for k in p.keys if o.key.startswith(k + ".")]
        if involved:
            named = ", ".join(dict.fromkeys(f"`{o.text}`" for o in involved))
            p = dataclasses.replace(p, text=f"{p.text} (with {named} from {COMMAND_LINE})")
        out.append(p)
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _known_keys(model: type[BaseModel], loc: tuple) -> tuple[list[str], list[str]]:
    """(the dotted path of the section at `loc` without pydantic's union tags, the field names
    of that section)."""
    candidates, path = [model], []
    for part in loc:
        fields = [c.model_fields[part] for c in candidates
                  if isinstance(part, str) and part in c.model_fields]
        inner = [m for f in fields for m in _models_in(f.annotation)]
        if fields or isinstance(part, int):
            path.append(str(part))
        if inner:
            candidates = inner
    return path, sorted({f.alias or name for c in candidates
                         for name, f in c.model_fields.items()})  # `checkpoint.async`


def unknown_key_hint(model: type[BaseModel] | None, loc: tuple, prefix: str = "") -> str:
    """" (did you mean `optim.lr`?)" for an unknown key at `loc`, or the known keys when none
    is close (difflib over the section's field names; misspelt section names too)."""
    if model is None or not loc:
        return ""
    path, names = _known_keys(model, tuple(loc[:-1]))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean `{'.'.join(p for p in (prefix, *path, close[0]) if p)}`?)"
    if names and len(names) <= 16:
        return f" (known keys here: {', '.join(names)})"
    return ""


def validation_problems(err: ValidationError, prefix: str = "",
                        model: type[BaseModel] | None = None) -> list[Problem]:
    """One problem per pydantic error, naming the dotted key (and, for an unknown key, the
    closest known one when `model` is given)."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + unknown_key_hint(model, e["loc"], prefix)
        elif e["type"] == "missing":
            msg = "required key is missing"
        problems.append(Problem(f"{loc or '(top level)'}: {msg}", (loc,) if loc else ()))
    return problems


def format_validation_error(err: ValidationError, prefix: str = "",
                            model: type[BaseModel] | None = None) -> list[str]:
    """One line per pydantic error, naming the dotted key."""
    return [p.text for p in validation_problems(err, prefix, model)]


T = TypeVar("T", bound=BaseModel)


def validate_section(cls: type[T], data: Any, prefix: str = "",
                     source: str | None = None) -> T:
    """Build `cls` from `data`, raising ConfigError that lists every problem."""
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(validation_problems(err, prefix, cls), source) from None


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every value that differs, sorted by key."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k, "<unset>"), b.get(k, "<unset>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<unset>") != b.get(k, "<unset>")]
