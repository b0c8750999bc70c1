"""arrowtrain plot RUNDIR [RUNDIR ...] [--out FILE.png] [--smooth 0.9]

One PNG of the curves in each run's metrics.jsonl, runs overlaid (legend: the run folder's
name): train loss (raw, thin, and smoothed), validation loss, grad norm (raw and smoothed, log
scale), learning rate, tokens per second. Smoothing is an exponential moving average over the
logged rows (weight --smooth per row, bias-corrected at the start as TensorBoard does).
Restarts are dashed vertical lines: where a run resumed (its run_events.jsonl), where
restart_count changes (SLURM requeues) or where the step sequence starts over."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pretrain.train.events import read_events

DEFAULT_SMOOTH = 0.9


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
    return [s for s, _ in pts], [v for _, v in pts]


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, bias-corrected (the first values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i) if weight < 1 else v)
    return out


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


def _draw_run(axes, rows: list[dict], steps_restarted: list[int], label: str, color,
              smooth: float) -> None:
    loss_ax, gn_ax, lr_ax, tps_ax = axes
    steps, loss = _series(rows, "loss")
    loss_ax.plot(steps, loss, color=color, alpha=0.25, lw=0.8)
    loss_ax.plot(steps, ema(loss, smooth), color=color, lw=1.8, label=f"{label} train")
    vs, val = _series(rows, "val_loss")
    if vs:
        loss_ax.plot(vs, val, "o--", color=color, ms=4, lw=1, label=f"{label} validation")
    gs, gn = _series(rows, "grad_norm")
    gn_ax.plot(gs, gn, color=color, alpha=0.25, lw=0.8)
    gn_ax.plot(gs, ema(gn, smooth), color=color, lw=1.8, label=label)
    lr_ax.plot(*_series(rows, "lr"), color=color, label=label)
    tps_ax.plot(*_series(rows, "tokens_per_sec"), color=color, label=label)
    for ax in axes:
        for s in steps_restarted:
            ax.axvline(s, color=color, ls=":", lw=1.2, alpha=0.9)


def plot(run_dirs, out: str | Path | None = None, smooth: float = DEFAULT_SMOOTH) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    one = isinstance(run_dirs, (str, Path))
    run_dirs = [Path(run_dirs)] if one else [Path(r) for r in run_dirs]
    out = Path(out) if out else (run_dirs[0] / "curves.png" if len(run_dirs) == 1
                                 else Path("curves.png"))
    fig, grid = plt.subplots(2, 2, figsize=(14, 8.5))
    axes = grid.ravel()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_restart, any_grad_norm = False, False
    for i, (run_dir, label) in enumerate(zip(run_dirs, labels(run_dirs))):
        rows = read_metrics(run_dir)
        marks = restarts(run_dir, rows)
        any_restart |= bool(marks)
        any_grad_norm |= bool(_series(rows, "grad_norm")[0])
        _draw_run(axes, rows, marks, label, colors[i % len(colors)], smooth)
    titles = [f"loss (nats/token): thin raw, thick EMA {smooth}", "grad norm (before clipping)",
              "learning rate", "tokens/s (all ranks)"]
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    if any_grad_norm:
        axes[1].set_yscale("log")
    else:  # DeepSpeed reports no grad norm at ZeRO-0 in fp32
        axes[1].text(0.5, 0.5, "no grad norm logged\n(ZeRO-0 fp32: DeepSpeed reports none)",
                     ha="center", va="center", transform=axes[1].transAxes, color="gray")
    handles, names = axes[0].get_legend_handles_labels()
    if any_restart:
        handles.append(Line2D([], [], color="gray", ls=":", lw=1.2))
        names.append("restart (resumed)")
    axes[0].legend(handles, names, fontsize=8)
    fig.suptitle(", ".join(str(r) for r in run_dirs), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _smooth_weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1) (0: no smoothing)")
    return value


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog or "python -m arrowtrain.commands.plot",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUNDIR",
                   help="run folders (each holds metrics.jsonl); several are overlaid")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG path (default: RUNDIR/curves.png for one run, ./curves.png for "
                   "several)")
    p.add_argument("--smooth", type=_smooth_weight, default=DEFAULT_SMOOTH,
                   help=f"EMA weight per logged row, 0 = none (default: {DEFAULT_SMOOTH})")
    args = p.parse_args(argv)
    missing = [str(r / "metrics.jsonl") for r in args.run_dirs
               if not (r / "metrics.jsonl").is_file()]
    if missing:
        print(f"error: no metrics yet: {', '.join(missing)} does not exist", file=sys.stderr)
        return 2
    print(plot(args.run_dirs, args.out, args.smooth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
