"""python -m pretrain.plot RUNDIR [--out RUNDIR/curves.png]

One PNG of a run's curves from metrics.jsonl: train and validation loss, learning rate,
tokens per second."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    rows = read_metrics(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(*_series(rows, "loss"), label="train")
    ax.plot(*_series(rows, "val_loss"), "o-", label="validation")
    ax.set(title="loss (nats/token)", xlabel="step")
    ax.legend()
    axes[1].plot(*_series(rows, "lr"))
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(*_series(rows, "tokens_per_sec"))
    axes[2].set(title="tokens/s (all ranks)", xlabel="step")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default RUNDIR/curves.png)")
    args = p.parse_args(argv)
    if not (args.run_dir / "metrics.jsonl").is_file():
        print(f"error: {args.run_dir / 'metrics.jsonl'} does not exist", file=sys.stderr)
        return 2
    print(plot(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
