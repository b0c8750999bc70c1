"""The reference of a typed config, read from the pydantic sections themselves: each key's type,
default, allowed values (Literal choices, bounds) and meaning (its `Field(description=...)`, the
one place a key is explained). `arrowtrain config explain` prints it, docs/config.md is it in
Markdown. Torch-free."""

from __future__ import annotations

import difflib
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", "≥"), (at.Lt, "lt", "<"), (at.Le, "le", "≤"))


@dataclass(frozen=True)
class KeyDoc:
    """One config key: `key` dotted ("optim.lr"); `section` when it holds keys of its own."""

    key: str
    type: str
    default: str
    allowed: str
    meaning: str
    section: bool = False


def _type_name(annotation: Any) -> str:
    """int, float, path, `int or null`, `list of str`, `{path, weight}` for a list's section."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        kinds = sorted({type(a).__name__ for a in args})
        return " or ".join(kinds)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(annotation.model_fields) + "}"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _literal_choices(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [c for a in typing.get_args(annotation) for c in _literal_choices(a)]


def value_text(value: Any) -> str:
    """A value as YAML writes it: null, true, 0.0003, [], {}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def _bounds(metadata: list[Any]) -> str:
    metadata = [x for m in metadata for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
    return ", ".join(f"{sign} {value_text(getattr(m, attr))}" for m in metadata
                     for kind, attr, sign in BOUNDS if isinstance(m, kind))


def _allowed(info: FieldInfo) -> str:
    """`one of a, b`; `>= 0`; a choice or a bounded number: `one of auto, or int >= 0`."""
    choices = _literal_choices(info.annotation)
    if not choices:
        return _bounds(info.metadata)
    listed = "one of " + ", ".join(value_text(c) for c in choices)
    others = [a for a in typing.get_args(info.annotation)
              if typing.get_origin(a) is not Literal and a is not type(None)]
    if typing.get_origin(info.annotation) is Literal or not others:
        return listed
    rest = [" ".join(filter(None, [_type_name(a), _bounds(
        list(typing.get_args(a)[1:]) if typing.get_origin(a) is Annotated else [])]))
        for a in others]
    return f"{listed}, or {' or '.join(rest)}"


def _default(info: FieldInfo, section: bool) -> str:
    if info.is_required():
        return "required"
    if section:
        return "(section)"
    if info.default_factory is not None:
        return value_text(info.default_factory())
    return value_text(info.default)


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section class a field holds (not a list of them, as data.path's mixture)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def describe(model: type[BaseModel], prefix: str = "") -> list[KeyDoc]:
    """Every key of `model`, then each of its sections' (in declaration order, depth first);
    fields excluded from dumps (moved keys kept only to name their new place) are left out."""
    out: list[KeyDoc] = []
    fields = [(n, f) for n, f in model.model_fields.items() if not f.exclude]
    fields.sort(key=lambda nf: _section(nf[1].annotation) is not None)  # own keys first
    for name, info in fields:
        name = info.alias or name  # `checkpoint.async` (a keyword in Python: field `async_`)
        key = f"{prefix}.{name}" if prefix else name
        inner = _section(info.annotation)
        meaning = " ".join((info.description or "").split())
        if inner is not None:
            out.append(KeyDoc(key, "section", _default(info, True), "", meaning, True))
            out += describe(inner, key)
        else:
            out.append(KeyDoc(key, _type_name(info.annotation), _default(info, False),
                              _allowed(info), meaning))
    return out


def lookup(docs: list[KeyDoc], name: str) -> list[KeyDoc]:
    """The key `name` and, when it is a section, every key under it; [] when unknown."""
    return [d for d in docs if d.key == name or d.key.startswith(name + ".")]


def close_keys(docs: list[KeyDoc], name: str) -> list[str]:
    """Known keys like `name` (a misspelling, or the last part alone: `lr` -> optim.lr)."""
    keys = [d.key for d in docs]
    by_last = [k for k in keys if k.rsplit(".", 1)[-1] == name]
    return by_last or difflib.get_close_matches(name, keys, n=3, cutoff=0.6)


def _head(d: KeyDoc) -> str:
    if d.section:
        return f"{d.key}: section" + (" (required)" if d.default == "required" else "")
    if d.allowed.startswith("one of"):
        return f"{d.key}: {d.allowed}; default {d.default}"
    allowed = f", {d.allowed}" if d.allowed else ""
    return f"{d.key}: {d.type}{allowed}; default {d.default}"


def as_text(docs: list[KeyDoc], width: int = 100) -> str:
    """One entry per key: `optim.lr: float, > 0; default 0.0003`, its meaning indented below;
    a blank line before each section."""
    lines: list[str] = []
    for d in docs:
        if d.section and lines:
            lines.append("")
        lines.append(_head(d))
        if d.meaning:
            lines += textwrap.wrap(d.meaning, width, initial_indent="    ",
                                   subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(default: str) -> str:
    return default if default == "required" else f"`{_cell(default)}`"


def as_markdown(docs: list[KeyDoc], title: str, intro: str) -> str:
    """A heading per section, a table of its own keys (type, default, allowed, meaning)."""
    out = [f"# {title}", "", *textwrap.wrap(intro, 100, break_on_hyphens=False), ""]
    groups: list[tuple[KeyDoc | None, list[KeyDoc]]] = [(None, [])]
    for d in docs:
        if d.section:
            groups.append((d, []))
        else:
            parent = next((g for g in reversed(groups) if g[0] is not None
                           and d.key.startswith(g[0].key + ".")), groups[0])
            parent[1].append(d)
    for section, keys in groups:
        out += [f"## `{section.key}`" if section else "## Top level", ""]
        if section and section.meaning:
            text = section.meaning[0].upper() + section.meaning[1:] + "."
            out += [*textwrap.wrap(text, 100, break_on_hyphens=False), ""]
        if not keys:
            continue
        out += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        out += [f"| `{d.key}` | {_cell(d.type)} | {_default_cell(d.default)} | "
                f"{_cell(d.allowed)} | {_cell(d.meaning)} |" for d in keys]
        out.append("")
    return "\n".join(out)
