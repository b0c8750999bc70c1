"""What every launcher shares: input checks, config validation before anything starts, the
per-rank environment and how the ranks' exit codes combine into one."""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_RESUME

REPO = Path(__file__).resolve().parents[1]
TRAIN_MODULE = "pretrain.train"


class LaunchError(ValueError):
    """Bad launcher input; the message names the option."""


def check_text(option: str, value: str) -> str:
    """Refuse control characters (newline, NUL, escape, ...) in any value that reaches a
    command line, a script or a log line."""
    for i, ch in enumerate(value):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise LaunchError(
                f"{option}: value {value!r} contains the control character {ch!r} at "
                f"position {i}; names, paths and overrides must be printable text")
    return value


def check_all(option: str, values: Iterable[str]) -> list[str]:
    return [check_text(option, v) for v in values]


def load_config(config: str, overrides: Sequence[str], world_size: int | None,
                ranks_per_node: int | None = None):
    """Every pre-flight check, exactly as the ranks will run them (config, command line, data
    folders; torch-free, so the launcher starts fast). Returns the RunConfig as the ranks will
    run it; raises pretrain.configlib.ConfigError listing every problem. `ranks_per_node`:
    for the node cache of s3:// data."""
    from pretrain.train.preflight import check_run

    return check_run(config, list(overrides), world_size=world_size,
                     ranks_per_node=ranks_per_node)


def validate_or_exit(config: str, overrides: Sequence[str], world_size: int | None,
                     ranks_per_node: int | None = None):
    """load_config, or print every problem and exit 2 before any process starts."""
    from pretrain.configlib import ConfigError

    check_text("--config", config)
    check_all("override", overrides)
    if not Path(config).is_file():
        print(f"error: --config {config}: no such file", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    try:
        cfg = load_config(config, overrides, world_size, ranks_per_node)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    from pretrain.train.preflight import resume_findings

    for note in resume_findings(cfg)[1]:  # the ranks warn again, with every file verified
        print(f"warning: {note}", file=sys.stderr)
    return cfg


def print_config(cfg) -> int:
    """--print-config: the resolved config as YAML on stdout (what RUNDIR/config.yaml will
    hold); nothing is started."""
    from pretrain.configlib import dump_yaml
    from pretrain.train.config import config_to_dict

    sys.stdout.write(dump_yaml(config_to_dict(cfg)))
    return EXIT_OK


def default_omp_threads(ranks_on_this_node: int) -> int:
    """The caller's OMP_NUM_THREADS if set, else the cores split evenly between the ranks of
    one node (at least 1)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]):
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, ranks_on_this_node))


def train_env(base: dict[str, str] | None = None, omp_threads: int | None = None,
              **dist: int | str) -> dict[str, str]:
    """Environment for one trainer process: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT (those given in `dist`), OMP_NUM_THREADS, and the repo on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env.update({k: str(v) for k, v in dist.items()})
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def normalize_code(code: int) -> int:
    """Popen gives -SIG for a signal death; shells say 128+SIG."""
    return 128 - code if code < 0 else code


def combine_exit_codes(codes: Sequence[int]) -> int:
    """0 if all ranks finished; 75 if some rank said 75 and none failed; else the first
    failure (in rank order)."""
    codes = [normalize_code(c) for c in codes]
    failures = [c for c in codes if c not in (EXIT_OK, EXIT_RESUME)]
    if failures:
        return failures[0]
    return EXIT_RESUME if EXIT_RESUME in codes else EXIT_OK
