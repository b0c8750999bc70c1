"""arrowtrain plot RUNDIR [RUNDIR ...] [--out FILE.png] [--smooth 0.05]

One PNG of the curves in each run's metrics.jsonl, runs overlaid (legend: the run folder's
name), one panel per metric some run logged: loss (train, and validation as points),
validation bits per byte (decoder runs), validation BLEU (translation runs), grad norm (log
scale; DeepSpeed reports none at ZeRO-0 in fp32), learning rate, tokens per second. A metric no
run logged gets no panel (stderr names them).

Train loss and grad norm: the logged points faint, the smoothed curve bold. Smoothing is a
moving average over steps, not over logged rows: each point becomes the mean of the points
logged within half a window of its step, the window a share of the run's own steps (--smooth,
default 0.05: 5%), one-sided at the ends. So it adapts to the run's length and to its logging
interval, and the bold curve stays on the data of a short run instead of lagging behind it.
Restarts are dotted vertical lines: where a run resumed (its run_events.jsonl), where
restart_count changes (SLURM requeues) or where the step sequence starts over."""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from arrowtrain.cmdline import command_parser, number
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.train.events import read_events
from pretrain.train.metrics import read_rows

log = logging.getLogger("arrowtrain.commands.plot")

DEFAULT_SMOOTH = 0.05  # the window: 5% of the run's steps
RAW_MARKERS_UP_TO = 200  # points: more than this are drawn as a faint line only


@dataclass(frozen=True)
class Panel:
    key: str  # the metrics.jsonl field that decides whether the panel is drawn
    title: str
    style: str  # "curve": faint points + bold smoothed curve; "points": evaluations; "line"
    log_scale: bool = False
    also: tuple[str, ...] = ()  # further fields drawn in it as evaluation points


PANELS = (
    Panel("loss", "loss (nats/token): train faint raw, bold smoothed; validation points",
          "curve", also=("val_loss",)),
    Panel("val_bpb", "validation bits per UTF-8 byte", "points"),
    Panel("val_bleu", "validation BLEU (sacreBLEU)", "points"),
    Panel("grad_norm", "grad norm (before clipping): faint raw, bold smoothed", "curve",
          log_scale=True),
    Panel("lr", "learning rate", "line"),
    Panel("tokens_per_sec", "tokens/s (all ranks)", "line"),
)
WHY_MISSING = {"grad_norm": "DeepSpeed reports none at ZeRO-0 in fp32",
               "val_bleu": "translation (seq2seq) runs only", "val_bpb": "decoder runs only"}


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of RUNDIR/metrics.jsonl (lines cut short by a kill are skipped)."""
    return read_rows(Path(run_dir) / "metrics.jsonl").rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged a finite `key`."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
           and "step" in r and math.isfinite(r[key])]
    return [s for s, _ in pts], [float(v) for _, v in pts]


def _segments(steps: list[int]) -> list[slice]:
    """Runs of ascending steps (a run whose step sequence starts over has several)."""
    cuts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    bounds = [0, *cuts, len(steps)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def smooth(steps: list[int], values: list[float], window_steps: float) -> list[float]:
    """Centred moving average over steps: each value becomes the mean of the values logged
    within ±window_steps/2 of its step (one-sided at the ends; a window below the logging
    interval leaves the values as they are). Each ascending run of steps is smoothed alone."""
    import numpy as np

    out: list[float] = []
    half = window_steps / 2
    for seg in _segments(steps):
        s, v = np.asarray(steps[seg], dtype=float), np.asarray(values[seg], dtype=float)  # (n,)
        lo = np.searchsorted(s, s - half, side="left")  # (n,) first index in the window
        hi = np.searchsorted(s, s + half, side="right")  # (n,) one past the last
        total = np.concatenate([[0.0], np.cumsum(v)])  # (n + 1,)
        out += ((total[hi] - total[lo]) / (hi - lo)).tolist()
    return out


def window_steps(rows: list[dict], share: float) -> float:
    """The smoothing window of one run: `share` of the steps its training rows span."""
    steps = [r["step"] for r in rows if "loss" in r and "step" in r]
    return share * (max(steps) - min(steps)) if steps else 0.0


def restarts(run_dir: Path, rows: list[dict]) -> list[int]:
    """Steps where the run started again: resumes in run_events.jsonl, a changed
    restart_count, or a step not above the previous row's (training rows only)."""
    found = {int(e["step"]) for e in read_events(run_dir)
             if e["event"] == "start" and int(e.get("step", 0)) > 0}
    train = [r for r in rows if "loss" in r and "step" in r]
    for prev, row in zip(train, train[1:]):
        if row.get("restart_count", 0) != prev.get("restart_count", 0) \
                or row["step"] <= prev["step"]:
            found.add(int(row["step"]))
    return sorted(found)


def labels(run_dirs: list[Path]) -> list[str]:
    """The folder names, with parents added until they differ."""
    resolved = [p.resolve() for p in run_dirs]
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        names = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in run_dirs]


def panels_for(runs_rows: list[list[dict]]) -> list[Panel]:
    """The panels of the metrics some run logged, in PANELS' order."""
    def logged(key: str) -> bool:
        return any(_series(rows, key)[0] for rows in runs_rows)

    return [p for p in PANELS if any(logged(k) for k in (p.key, *p.also))]


def _draw_panel(ax, panel: Panel, rows: list[dict], label: str, color, window: float) -> None:
    steps, values = _series(rows, panel.key)
    if panel.style == "curve" and steps:
        marker = "." if len(steps) <= RAW_MARKERS_UP_TO else None
        ax.plot(steps, values, color=color, alpha=0.3, lw=0.8, marker=marker, ms=3,
                label=f"_raw {label}")
        name = f"{label} train" if panel.key == "loss" else label
        ax.plot(steps, smooth(steps, values, window), color=color, lw=1.8, label=name)
    elif panel.style == "points" and steps:
        ax.plot(steps, values, "o--", color=color, ms=4, lw=1, label=label)
    elif steps:
        ax.plot(steps, values, color=color, label=label)
    for key in panel.also:  # validation loss on the loss panel
        vs, val = _series(rows, key)
        if vs:
            ax.plot(vs, val, "o--", color=color, ms=4, lw=1, label=f"{label} validation")


def _layout(plt, n: int):
    """A figure of n panels, 2 (up to 4 panels) or 3 columns; no axes left over."""
    ncols = 1 if n == 1 else 2 if n <= 4 else 3
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(7 * ncols, 4.25 * nrows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def draw(run_dirs: list[Path], share: float = DEFAULT_SMOOTH):
    """The figure of `run_dirs` overlaid (matplotlib Agg; the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    runs_rows = [read_metrics(r) for r in run_dirs]
    panels = panels_for(runs_rows)
    missing = [p.key for p in PANELS if p not in panels]
    if missing:
        log.info("not logged, no panel: %s", ", ".join(
            f"{k} ({WHY_MISSING[k]})" if k in WHY_MISSING else k for k in missing))
    fig, axes = _layout(plt, max(len(panels), 1))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_restart = False
    for i, (run_dir, rows, label) in enumerate(zip(run_dirs, runs_rows, labels(run_dirs))):
        color, marks = colors[i % len(colors)], restarts(run_dir, rows)
        any_restart |= bool(marks)
        for ax, panel in zip(axes, panels):
            _draw_panel(ax, panel, rows, label, color, window_steps(rows, share))
            for s in marks:
                ax.axvline(s, color=color, ls=":", lw=1.2, alpha=0.9)
    for ax, panel in zip(axes, panels):
        ax.set(title=panel.title, xlabel="step")
        ax.grid(alpha=0.3)
        if panel.log_scale:
            ax.set_yscale("log")
    handles, names = axes[0].get_legend_handles_labels()
    if any_restart:
        handles.append(Line2D([], [], color="gray", ls=":", lw=1.2))
        names.append("restart (resumed)")
    if handles:
        axes[0].legend(handles, names, fontsize=8)
    fig.suptitle(", ".join(str(r) for r in run_dirs) + f"  (smoothing window: {share:g} of "
                 "each run's steps)", fontsize=9)
    fig.tight_layout()
    return fig


def plot(run_dirs, out: str | Path | None = None, smooth: float = DEFAULT_SMOOTH) -> Path:
    """Draw `run_dirs` (one folder or several) into a PNG: `out`, else RUNDIR/curves.png for
    one run and ./curves.png for several."""
    import matplotlib.pyplot as plt

    one = isinstance(run_dirs, (str, Path))
    run_dirs = [Path(run_dirs)] if one else [Path(r) for r in run_dirs]
    out = Path(out) if out else (run_dirs[0] / "curves.png" if len(run_dirs) == 1
                                 else Path("curves.png"))
    fig = draw(run_dirs, smooth)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


_smooth_share = number(float, lambda x: 0 <= x <= 1,
                       "in [0, 1] (a share of the run's steps; 0: no smoothing)")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from pretrain.logs import setup_logging

    p = command_parser(prog or "python -m arrowtrain.commands.plot", __doc__)
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUNDIR",
                   help="run folders (each holds metrics.jsonl); several are overlaid")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG path (default: RUNDIR/curves.png for one run, ./curves.png for "
                   "several)")
    p.add_argument("--smooth", type=_smooth_share, default=DEFAULT_SMOOTH,
                   help="smoothing window as a share of each run's steps, 0 = none "
                   f"(default: {DEFAULT_SMOOTH})")
    args = p.parse_args(argv)
    setup_logging()
    missing = [str(r / "metrics.jsonl") for r in args.run_dirs
               if not (r / "metrics.jsonl").is_file()]
    if missing:
        log.error("no metrics yet: %s does not exist", ", ".join(missing))
        return EXIT_CONFIG
    print(plot(args.run_dirs, args.out, args.smooth))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
