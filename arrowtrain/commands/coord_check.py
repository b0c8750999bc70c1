"""arrowtrain coord-check --config X --widths 64,128,256,512 [--steps 5] [--out DIR] [KEY=VALUE ...]

muP's coordinate check: the run's model at each width (heads added with width, head dimension
fixed; kv heads and d_ff in proportion; dropout 0), trained a few steps on the run's data under
both parametrizations — in this process, on one rank, CPU is fine — with a constant lr
(optim.lr, no warmup) and no clipping. Step t is the forward after t - 1 updates; every width
sees the same batches from the same seed. model.mup_base_width is the muP base (default: the
config's d_model).

Writes DIR/coord_check.csv (parametrization, width, step, layer, mean_abs: the mean |x| of the
embedding output, each block's attention and feed-forward outputs and its output, the logits)
and DIR/coord_check_standard.png, DIR/coord_check_mup.png (one panel per step, one line per
layer, width on a log axis). Prints a verdict per layer: the worst max/min across widths after
step 1, the log-log slope, and `flat` (max/min <= 2) or `grows` / `shrinks with width`. Under
muP every layer should be flat; under standard the hidden layers grow with width."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from arrowtrain.cmdline import command_parser, number
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

FIELDS = ("parametrization", "width", "step", "layer", "mean_abs")


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. "
                                         "64,128,256,512") from None
    if len(widths) < 2 or min(widths) < 1 or len(set(widths)) != len(widths):
        raise argparse.ArgumentTypeError(f"{text!r}: at least two different widths >= 1")
    return sorted(widths)


_steps = number(int, lambda n: n >= 1, "a whole number of steps >= 1")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser(prog or "python -m arrowtrain.commands.coord_check", __doc__)
    p.add_argument("--config", required=True, help="run config YAML (its model, data, optim)")
    p.add_argument("--widths", type=_widths, required=True,
                   help="comma-separated d_model values, e.g. 64,128,256,512")
    p.add_argument("--steps", type=_steps, default=5, help="steps per width (default: 5)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: RUNDIR/coord_check of the config)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. optim.lr=1e-2 model.n_layers=4")
    return p


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in FIELDS})


def plot(rows: list[dict], parametrization: str, path: Path) -> Path:
    """One panel per step; in each, mean |x| against width (log-log), one line per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["parametrization"] == parametrization]
    steps = sorted({r["step"] for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(1, len(steps), figsize=(3.2 * len(steps) + 1.6, 3.6),
                             sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis", max(len(layers), 2))
    for ax, t in zip(axes[0], steps):
        for i, layer in enumerate(layers):
            pts = sorted((r["width"], r["mean_abs"]) for r in rows
                         if r["step"] == t and r["layer"] == layer)
            ax.plot([w for w, _ in pts], [v for _, v in pts], "o-", ms=3, color=cmap(i),
                    label=layer)
        ax.set(title=f"step {t}", xlabel="width (d_model)", xscale="log", yscale="log")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    name = "muP" if parametrization == "mup" else parametrization
    fig.suptitle(f"coordinate check, {name} parametrization: mean |activation| against width",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def verdict_table(found) -> str:
    """The per-layer verdicts, standard and muP side by side."""
    by = {(v.parametrization, v.layer): v for v in found}
    params = list(dict.fromkeys(v.parametrization for v in found))
    layers = list(dict.fromkeys(v.layer for v in found))
    head = f"{'layer':<14}" + "".join(f"{p + ': max/min  slope  verdict':<44}" for p in params)
    lines = [head.rstrip()]
    for layer in layers:
        cells = []
        for p in params:
            v = by.get((p, layer))
            cells.append(f"{v.max_over_min:>{len(p) + 9}.2f}  {v.slope:>5.2f}  {v.verdict:<18}"
                         if v else "")
        lines.append((f"{layer:<14}" + "".join(f"{c:<44}" for c in cells)).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    from pretrain.configlib import ConfigError
    from pretrain.logs import setup_logging
    from pretrain.train.preflight import check_run

    setup_logging()
    try:
        cfg = check_run(args.config, args.overrides, world_size=1)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return run(cfg, args.widths, args.steps, args.out)


def run(cfg, widths: list[int], steps: int, out: Path | None) -> int:
    from pretrain.train.coord import PARAMETRIZATIONS, coord_rows, verdicts, width_config

    if cfg.model.family != "decoder":
        print("error: model.family=encdec: the coordinate check (like muP here) is for "
              "decoders", file=sys.stderr)
        return EXIT_CONFIG
    try:
        for w in widths:
            width_config(cfg.model, w, "mup")
    except ValueError as e:
        print(f"error: --widths: {e}", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(out) if out is not None else cfg.run_dir / "coord_check"
    out.mkdir(parents=True, exist_ok=True)
    rows = coord_rows(cfg, widths, steps,
                      log=lambda text: print(f"coord-check: {text}", file=sys.stderr))
    write_csv(rows, out / "coord_check.csv")
    for p in PARAMETRIZATIONS:
        plot(rows, p, out / f"coord_check_{p}.png")
    base = cfg.model.mup_base_width or cfg.model.d_model
    print(f"coordinate check: widths {','.join(map(str, widths))}, {steps} steps, lr "
          f"{cfg.optim.lr:g}, muP base width {base}; judged after step 1 (flat: max/min <= 2)")
    print(verdict_table(verdicts(rows)))
    print(f"wrote {out / 'coord_check.csv'}, {out / 'coord_check_standard.png'}, "
          f"{out / 'coord_check_mup.png'}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
