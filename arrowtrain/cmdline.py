"""argparse pieces the commands share: the parser of a command whose module docstring is its
help, and number types whose bad values are usage errors that name the flag
(`argument --x: ...`; exit 2, usage, no traceback)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A command's parser: `doc` (its module docstring) as the description, laid out as written."""
    return argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def number(kind: type, ok: Callable[[float], bool], check: str) -> Callable[[str], float]:
    """An argparse type: `kind` (int or float) for which `ok(value)` holds (NaN fails every
    comparison), else "TEXT is not CHECK"; text that is no `kind` at all: "'TEXT' is not an
    integer" (or "a number")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {check}")
        return value
    return parse
