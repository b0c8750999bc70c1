"""A sweep's grid (`arrowtrain sweep`): `--grid KEY=V1,V2,...` axes, their combinations as named
runs, and every combination through the pre-flight before any run starts. Torch-free.

Each combination is an ordinary run: the config with the user's overrides, then the grid's
values (and `seed` with --seeds), then `run_dir=DIR/runs/NAME` and the W&B group and name of the
sweep. NAME is the grid's values, `key=value` joined by `_` (a key by its last part unless that
is ambiguous), made filesystem-safe.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.configlib import ConfigError, Problem
from pretrain.train.config import RunConfig

RESERVED = ("run_dir", "logging.wandb.group", "logging.wandb.name")  # the sweep sets these
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]  # as typed (YAML-parsed by the config, like any override)


def _control_chars(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def parse_grid(items: Sequence[str], seeds: int = 1) -> list[Axis]:
    """The axes of `--grid KEY=V1,V2,...` options; ConfigError listing every malformed one."""
    axes, problems = [], []
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        values = tuple(v.strip() for v in raw.split(","))
        if _control_chars(item):
            problems.append(f"--grid {item!r}: control characters are not allowed")
        elif not eq or not key or not all(values):
            problems.append(f"--grid {item!r}: expected KEY=V1,V2,... (no empty value)")
        elif key in RESERVED:
            problems.append(f"--grid {key}: set by the sweep itself (DIR/runs/NAME, the "
                            "sweep's W&B group)")
        elif key in (a.key for a in axes):
            problems.append(f"--grid {key}: given twice (put every value in one --grid)")
        elif key == "seed" and seeds > 1:
            problems.append("--grid seed with --seeds: give seeds one way")
        elif len(set(values)) != len(values):
            problems.append(f"--grid {item!r}: a value appears twice")
        else:
            axes.append(Axis(key, values))
    if problems:
        raise ConfigError([Problem(p, origin="the command line") for p in problems])
    return axes


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


@dataclass(frozen=True)
class Combo:
    """One run of the sweep."""

    name: str
    values: dict[str, str]  # grid key -> value as typed
    seed: int | None = None  # with --seeds
    overrides: tuple[str, ...] = field(default=())  # the grid's and the seed's

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.values.items()]
        return " ".join(parts + ([f"seed={self.seed}"] if self.seed is not None else []))


def combinations(axes: Sequence[Axis], seeds: Sequence[int] | None = None) -> list[Combo]:
    """Every combination (the first axis varies slowest), each seed of each; unique names."""
    short = _short_keys([a.key for a in axes])
    out, taken = [], set()
    for values in itertools.product(*(a.values for a in axes)):
        chosen = dict(zip((a.key for a in axes), values))
        for seed in seeds or [None]:
            parts = [f"{short[k]}={v}" for k, v in chosen.items()]
            parts += [f"seed={seed}"] if seed is not None else []
            name = _UNSAFE.sub("-", "_".join(parts)) or "run"
            while name in taken:
                name += "+"
            taken.add(name)
            overrides = [f"{k}={v}" for k, v in chosen.items()]
            overrides += [f"seed={seed}"] if seed is not None else []
            out.append(Combo(name, chosen, seed, tuple(overrides)))
    return out


def run_overrides(combo: Combo, user: Sequence[str], sweep_dir: Path, group: str) -> list[str]:
    """The overrides of one run, in the order they apply (later ones win). The sweep's own
    values are JSON strings (valid YAML), so no path or name is read as a number or comment."""
    return [*user, *combo.overrides, f"run_dir={json.dumps(str(sweep_dir / 'runs' / combo.name))}",
            f"logging.wandb.group={json.dumps(group)}",
            f"logging.wandb.name={json.dumps(combo.name)}"]


def check_grid(config: str | Path, combos: Sequence[Combo], user: Sequence[str],
               sweep_dir: Path, group: str, world_size: int | None) -> dict[str, RunConfig]:
    """Every run through the pre-flight (pretrain.train.preflight.check_run); the configs by
    run name, or one ConfigError naming every refused value once, with the runs it refuses."""
    from pretrain.train.preflight import check_run

    reserved = [o for o in user if o.partition("=")[0].strip() in RESERVED]
    if reserved:
        raise ConfigError([Problem(f"override `{o}`: the sweep sets it (DIR/runs/NAME, the "
                                   "sweep's W&B group and run names)", origin="the command line")
                           for o in reserved])
    configs, refused = {}, {}
    for combo in combos:
        try:
            configs[combo.name] = check_run(config, run_overrides(combo, user, sweep_dir, group),
                                            world_size)
        except ConfigError as err:
            for p in err.items:
                refused.setdefault(p.text, []).append(combo.name)
    if refused:
        lines = []
        for text, names in refused.items():
            which = "every run" if len(names) == len(combos) else (
                ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
            lines.append(f"{text} [{which}]")
        raise ConfigError(lines, str(config))
    return configs
