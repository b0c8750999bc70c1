"""arrowtrain runs compare RUNDIR [RUNDIR ...] [--csv]

Runs side by side: one row per run folder with its state, the last step of train.max_steps, the
final train loss and the last validation loss, bits per byte and BLEU, the tokens trained, the
wall time, the training speed — and the config keys whose values differ between the runs.
Reads each folder's metrics.jsonl, run_events.jsonl and config.yaml (torch-free, fast); a
damaged or missing file gets one line on stderr naming it, and the run keeps what the other
files give. Exit 2 when a folder holds none of the three (the others are still shown).

- tokens: as the trainer counts them for tokens/s (`input_ids` of every rank, padding included)
- wall time: from each start to its exit in run_events.jsonl, summed over restarts
- tokens/s: the tokens over the step time they took (start-up, evaluations and saves excluded)
--csv prints the same as CSV (numbers unrounded, one column per differing config key)."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

log = logging.getLogger("arrowtrain.commands.runs")

# (CSV header, table header, how the table writes it): the columns of one run
COLUMNS = (("run", "run", str), ("state", "state", str), ("step", "step", str),
           ("train_loss", "train loss", "{:.4f}".format),
           ("val_loss", "val loss", "{:.4f}".format), ("val_bpb", "val bpb", "{:.4f}".format),
           ("val_bleu", "val BLEU", "{:.2f}".format), ("tokens", "tokens", "{:,}".format),
           ("wall_time_s", "wall time", None), ("tokens_per_sec", "tokens/s", "{:,.0f}".format))


def _wall(seconds: float) -> str:
    from pretrain.logs import human_duration

    return f"{seconds:.0f} s" if seconds < 90 else human_duration(seconds)


def _state(run_dir: Path) -> str:
    """launch status's word for the run: running | finished | stopped | failed | not started."""
    from launch.status import collect

    try:
        return str(collect(run_dir)["state"])
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged lock or checkpoint
        log.warning("%s: state unknown (%s)", run_dir, e)
        return "?"


def record(summary, label: str) -> dict[str, Any]:
    """One run's values by CSV header (None where the run has none)."""
    final = summary.final
    step = None if summary.step is None else (
        f"{summary.step}/{summary.max_steps}" if summary.max_steps else str(summary.step))
    return {"run": label, "state": _state(summary.run_dir), "step": step,
            "train_loss": final.get("loss"), "val_loss": final.get("val_loss"),
            "val_bpb": final.get("val_bpb"), "val_bleu": final.get("val_bleu"),
            "tokens": summary.tokens, "wall_time_s": summary.wall_seconds,
            "tokens_per_sec": summary.tokens_per_sec}


def _cell(value: Any, fmt) -> str:
    if value is None:
        return "-"
    if fmt is None:
        return _wall(value)
    return fmt(value)


def _value_text(value: Any) -> str:
    """A config value as one cell: YAML's spelling of null and booleans, lists inline."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows) + "\n"


def table(records: list[dict[str, Any]], configs: list[dict | None], keys: list[str]) -> str:
    """The runs as aligned text, then the config keys that differ (one row per key)."""
    shown = [c for c in COLUMNS if c[0] in ("run", "state", "step", "train_loss", "val_loss")
             or any(r[c[0]] is not None for r in records)]  # no all-empty val_bleu column
    rows = [[c[1] for c in shown]]
    rows += [[_cell(r[c[0]], c[2]) for c in shown] for r in records]
    text = _aligned(rows)
    if len(records) == 1:
        return text
    if not keys:
        return text + "\nconfig: the same in every run (run_dir aside)\n"
    grid = [["config key", *(r["run"] for r in records)]]
    grid += [[k, *("?" if c is None else _value_text(c.get(k, "(absent)")) for c in configs)]
             for k in keys]
    return text + "\nconfig keys that differ:\n" + _aligned(grid)


def as_csv(records: list[dict[str, Any]], configs: list[dict | None], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c[0] for c in COLUMNS] + keys)
    for r, cfg in zip(records, configs):
        cells = ["" if r[c[0]] is None else r[c[0]] for c in COLUMNS]
        cells += ["" if cfg is None else _value_text(cfg.get(k, "")) for k in keys]
        writer.writerow(cells)
    return out.getvalue()


def compare(run_dirs: list[Path], as_csv_text: bool = False) -> tuple[str, int]:
    """(the table or CSV of the readable runs, the exit code); problems go to the log."""
    from arrowtrain.commands.plot import labels
    from pretrain.train.run_summary import RunReadError, differing_keys, summarize

    summaries, code = [], EXIT_OK
    for run_dir in run_dirs:
        try:
            summaries.append(summarize(run_dir))
        except RunReadError as e:
            log.error("%s", e)
            code = EXIT_CONFIG
    for s in summaries:
        for note in s.notes:
            log.warning("%s", note)
    if not summaries:
        return "", code
    records = [record(s, label) for s, label in
               zip(summaries, labels([s.run_dir for s in summaries]))]
    configs = [s.config for s in summaries]
    keys = differing_keys(configs)
    text = as_csv(records, configs, keys) if as_csv_text else table(records, configs, keys)
    return text, code


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="runs side by side: final metrics, tokens, time, speed "
                       "and the config keys that differ",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUNDIR",
                   help="run folders (each holds metrics.jsonl, run_events.jsonl, config.yaml)")
    p.add_argument("--csv", action="store_true",
                   help="CSV on stdout instead of the aligned table")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from pretrain.logs import setup_logging

    p = argparse.ArgumentParser(prog=prog or "python -m arrowtrain.commands.runs",
                                description="Look at finished and running runs side by side.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{compare}")
    _compare_parser(sub)
    args = p.parse_args(argv)
    setup_logging()
    text, code = compare(args.run_dirs, args.csv)
    sys.stdout.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
