"""arrowtrain sweep --config X --grid KEY=V1,V2,... [--grid ...] [--seeds N] --out DIR
                 [--launcher local|slurm] [--parallel K] [--print] [--summary] [KEY=VALUE ...]

Every combination of the grid's values (times --seeds seeds) is an ordinary run in
DIR/runs/NAME (NAME: the values, e.g. lr=1e-3_d_model=128), started by the existing launchers:
`local` runs `launch local` for each, K at a time; `slurm` submits one job array (DIR/slurm/
sweep.sbatch, at most K tasks at once) whose tasks requeue themselves on exit 75 like `launch
slurm`'s job. Every run is checked first (the pre-flight, with its grid values): a bad key or a
value the config refuses stops the sweep before any run starts, every problem at once.

Resumable: run the same command again and finished runs are skipped, stopped and failed ones
resume from their last checkpoint (the state is `launch status`'s), running or queued ones are
left alone. Each run logs to W&B under one group (the name of DIR) as NAME.

Writes DIR/summary.csv (run, the swept keys, seed, final train loss, final val loss, tokens/s,
status), DIR/summary.md and DIR/val_loss.png (final val loss against each numeric swept key, one
line per value of the other keys, means over seeds; log axes where the values span a factor of
4 or more) after the runs — or at once with --summary (e.g. while a SLURM array runs) — and
prints the summary. Exit code: 0 every run finished, 75 some stopped (run again to resume),
else the first failure's code."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from arrowtrain.cmdline import command_parser, number
from launch.slurm import add_job_options
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_RESUME

OVERRIDES_HELP = "dotted config overrides for every run, e.g. train.max_steps=200"
FIELDS_AFTER = ("seed", "final_train_loss", "final_val_loss", "tokens_per_sec", "status")


_count = number(int, lambda n: n >= 1, "a whole number >= 1")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser(prog or "python -m arrowtrain.commands.sweep", __doc__)
    p.add_argument("--config", required=True, help="run config YAML every run starts from")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a swept config key and its values; repeat for more keys")
    p.add_argument("--seeds", type=_count, default=1,
                   help="runs per combination, with seeds seed, seed+1, ... (default: 1)")
    p.add_argument("--out", type=Path, required=True,
                   help="sweep folder DIR: runs in DIR/runs/NAME, summary files in DIR")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: launch local per run on this machine; slurm: one job array "
                   "(default: local)")
    p.add_argument("--parallel", type=_count, default=None,
                   help="runs at a time (default: 1 locally, no limit on SLURM)")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="check the grid, list the runs and their states, start nothing")
    p.add_argument("--summary", action="store_true",
                   help="write and print the summary of the runs so far, start nothing")
    p.add_argument("--nproc", type=_count, default=None,
                   help="local: ranks per run (default: launch local's: GPUs, else 1)")
    p.add_argument("--omp-threads", type=_count, default=None,
                   help="OMP_NUM_THREADS per rank (default: cores / (runs at a time x ranks))")
    _slurm_options(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    return p


def _slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("slurm (--launcher slurm; as `launch slurm`, per run)")
    add_job_options(g, count=_count, per=" per run", job_name="arrowtrain-sweep")
    g.add_argument("--dry-run", action="store_true",
                   help="print the job array script (local: the launch commands), start nothing")


# ---- the plan: runs, their configs and states ---------------------------------------------

@dataclass
class Plan:
    dir: Path
    group: str
    config: str
    keys: list[str]
    combos: list  # pretrain.train.grid.Combo
    configs: dict  # run name -> RunConfig
    user: list[str]

    def run_dir(self, name: str) -> Path:
        return self.dir / "runs" / name

    def overrides(self, combo) -> list[str]:
        from pretrain.train.grid import run_overrides

        return run_overrides(combo, self.user, self.dir, self.group)


def world_size(args) -> int:
    if args.launcher == "slurm":
        return args.nodes * (args.tasks_per_node or args.gpus_per_node or 1)
    from launch.local import default_nproc

    return args.nproc or default_nproc()


def make_plan(args) -> Plan:
    """Parse the grid and check every run (ConfigError listing every problem)."""
    from pretrain.train.grid import check_grid, combinations, parse_grid

    axes = parse_grid(args.grid, args.seeds)
    out = Path(os.path.abspath(args.out))
    config = os.path.abspath(args.config)
    seeds = None
    if args.seeds > 1:
        from pretrain.train.config import check_run_config

        checked = check_run_config(config, args.overrides)
        base = checked.cfg.seed if checked.cfg is not None else 0
        seeds = [base + i for i in range(args.seeds)]
    combos = combinations(axes, seeds)
    configs = check_grid(config, combos, args.overrides, out, out.name, world_size(args))
    return Plan(out, out.name, config, [a.key for a in axes], combos, configs,
                list(args.overrides))


def run_state(run_dir: Path) -> str:
    """launch status's state: running | finished | stopped | failed | not started."""
    if not run_dir.is_dir():
        return "not started"
    from launch.status import collect

    return collect(run_dir)["state"]


def queued_runs(plan: Plan) -> set[str]:
    """Runs whose task of an earlier job array is still pending or running in SLURM."""
    from launch.status import _tool

    out = set()
    for record in (plan.dir / "slurm").glob("array-*.json"):
        job_id = record.stem.split("-", 1)[1]
        names = json.loads(record.read_text())
        listed = _tool("squeue", "-h", "-r", "-j", job_id, "-o", "%K") or ""
        out |= {names[int(k)] for k in listed.split() if k.isdigit() and int(k) < len(names)}
    return out


def states(plan: Plan) -> dict[str, str]:
    queued = queued_runs(plan) if (plan.dir / "slurm").is_dir() else set()
    found = {c.name: run_state(plan.run_dir(c.name)) for c in plan.combos}
    return {n: ("queued" if n in queued and s in ("not started", "stopped") else s)
            for n, s in found.items()}


# ---- local: launch local per run, K at a time ---------------------------------------------

class Runner:
    """`launch local` processes, at most `parallel` at a time; a stop signal goes to every
    running launcher (they stop their ranks: save, exit 75) and no new run starts."""

    def __init__(self, plan: Plan, parallel: int, nproc: int | None, omp: int):
        self.plan, self.parallel, self.nproc, self.omp = plan, parallel, nproc, omp
        self.running: dict[str, subprocess.Popen] = {}
        self.codes: dict[str, int] = {}
        self.stopping = False

    def _command(self, combo) -> list[str]:
        nproc = ["--nproc", str(self.nproc)] if self.nproc else []
        return [sys.executable, "-m", "launch", "local", "--config", self.plan.config, *nproc,
                "--omp-threads", str(self.omp), *self.plan.overrides(combo)]

    def start(self, combo) -> None:
        from launch.common import train_env

        run_dir = self.plan.run_dir(combo.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "launch.log").open("ab") as log:
            self.running[combo.name] = subprocess.Popen(
                self._command(combo), stdout=log, stderr=subprocess.STDOUT, env=train_env(),
                start_new_session=True)  # signals reach it only through us
        _say(f"started {combo.name} ({combo.label()}); log {run_dir / 'launch.log'}")

    def on_signal(self, signum, _frame) -> None:
        self.stopping = True
        _say(f"{signal.Signals(signum).name}: stopping the running runs (they save and exit "
             "75); run the same command again to resume")
        for p in self.running.values():
            if p.poll() is None:
                p.send_signal(signum)

    def run(self, todo: list) -> dict[str, int]:
        queue = list(todo)
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        before = {sig: signal.signal(sig, self.on_signal) for sig in signals}
        try:
            while self.running or (queue and not self.stopping):
                while queue and not self.stopping and len(self.running) < self.parallel:
                    self.start(queue.pop(0))
                for name, p in list(self.running.items()):
                    if p.poll() is not None:
                        self.codes[name] = p.returncode
                        del self.running[name]
                        _say(f"{name}: exit {p.returncode} ({_meaning(p.returncode)})")
                time.sleep(0.2)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
        return self.codes


def _meaning(code: int) -> str:
    from pretrain.exit_codes import describe_exit

    return describe_exit(code)


def _say(text: str) -> None:
    print(f"[sweep] {text}", file=sys.stderr, flush=True)


def run_local(plan: Plan, todo: list, args) -> int:
    from launch.common import combine_exit_codes, default_omp_threads

    parallel = args.parallel or 1
    nproc = args.nproc or world_size(args)
    omp = args.omp_threads or default_omp_threads(parallel * nproc)
    runner = Runner(plan, parallel, args.nproc, omp)
    if args.dry_run:  # the launcher commands, one per run still to do
        print("\n".join(shlex.join(runner._command(c)) for c in todo))
        return EXIT_OK
    codes = runner.run(todo)
    left = len(todo) - len(codes)
    if left:
        _say(f"{left} run(s) not started (stopped); run the same command again")
    return combine_exit_codes(list(codes.values()) + ([EXIT_RESUME] * left))


# ---- slurm: one job array -----------------------------------------------------------------

def submit_array(plan: Plan, todo: list, args) -> int:
    from launch.common import LaunchError
    from launch.slurm import (
        ArrayTask,
        SlurmJob,
        job_options,
        render_array_script,
        submit,
        validate_array,
        write_array_script,
    )

    job = SlurmJob(config=plan.config, overrides=[], run_dir=str(plan.dir), **job_options(args))
    tasks = [ArrayTask(str(plan.run_dir(c.name)), plan.overrides(c)) for c in todo]
    try:
        validate_array(job, tasks, args.parallel)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    text = render_array_script(job, tasks, args.parallel)
    if args.dry_run:
        sys.stdout.write(text)
        return EXIT_OK
    script = write_array_script(plan.dir / "slurm", text)
    try:
        job_id = submit(script)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    (script.parent / f"array-{job_id}.json").write_text(json.dumps([c.name for c in todo]))
    _say(f"submitted job array {job_id}: {len(tasks)} run(s); script {script}; each run's log "
         "in DIR/runs/NAME/slurm/; `arrowtrain sweep ... --summary` when they are done")
    return EXIT_OK


# ---- summary ------------------------------------------------------------------------------

def _metrics(run_dir: Path) -> list[dict]:
    from pretrain.train.events import read_jsonl  # skips cut and non-object lines

    return read_jsonl(run_dir / "metrics.jsonl")


def summary_rows(plan: Plan, found: dict[str, str]) -> list[dict]:
    out = []
    for c in plan.combos:
        rows = _metrics(plan.run_dir(c.name))
        train = [r for r in rows if r.get("loss") is not None]
        val = [r for r in rows if r.get("val_loss") is not None]
        speeds = [r["tokens_per_sec"] for r in (train[1:] or train) if r.get("tokens_per_sec")]
        out.append({"run": c.name, **c.values, "seed": plan.configs[c.name].seed,
                    "final_train_loss": train[-1]["loss"] if train else None,
                    "final_val_loss": val[-1]["val_loss"] if val else None,
                    "tokens_per_sec": statistics.median(speeds) if speeds else None,
                    "status": found[c.name]})
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1000 else (
        f"{value:,.0f}" if isinstance(value, float) else str(value))


def write_summary(plan: Plan, rows: list[dict]) -> str:
    """DIR/summary.csv, DIR/summary.md, DIR/val_loss.png; returns the markdown table."""
    fields = ["run", *plan.keys, *FIELDS_AFTER]
    with (plan.dir / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: r[k] for k in fields} for r in rows)
    table = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    table += ["| " + " | ".join(_cell(r[k]) for k in fields) + " |" for r in rows]
    done = [r for r in rows if r["final_val_loss"] is not None]
    best = min(done, key=lambda r: r["final_val_loss"]) if done else None
    counts = statistics_line(rows)
    png = plot_sweep(rows, plan.keys, plan.dir / "val_loss.png")
    md = [f"# Sweep {plan.dir.name}", "", f"config `{plan.config}`, {len(rows)} runs: {counts}",
          "", *table, ""]
    if best:
        md.append(f"Best final validation loss: **{best['run']}** ({best['final_val_loss']:.4f})")
    if png:
        md += ["", f"![final validation loss]({png.name})"]
    (plan.dir / "summary.md").write_text("\n".join(md) + "\n")
    return "\n".join(table)


def statistics_line(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _spans(values: list[float], factor: float = 4.0) -> bool:
    return min(values) > 0 and max(values) / min(values) >= factor


def plot_sweep(rows: list[dict], keys: list[str], path: Path) -> Path | None:
    """Final val loss against each numeric swept key (means over seeds), one line per value of
    the other keys; None when no key is numeric or no run has a val loss yet."""
    numeric = [k for k in keys if len({r[k] for r in rows}) > 1
               and all(_number(r[k]) is not None for r in rows)]
    done = [r for r in rows if r["final_val_loss"] is not None]
    if not numeric or not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(numeric), figsize=(5.5 * len(numeric), 4), squeeze=False)
    for ax, key in zip(axes[0], numeric):
        _panel(ax, done, key, [k for k in keys if k != key])
    fig.suptitle(f"sweep {path.parent.name}: final validation loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _panel(ax, rows: list[dict], key: str, others: list[str]) -> None:
    lines: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        pts = lines.setdefault(tuple(r[o] for o in others), {})
        pts.setdefault(float(r[key]), []).append(r["final_val_loss"])
    for values, pts in lines.items():
        xs = sorted(pts)
        ys = [statistics.mean(pts[x]) for x in xs]
        label = ", ".join(f"{o}={v}" for o, v in zip(others, values)) or "all runs"
        line, = ax.plot(xs, ys, "o-", ms=4, label=label)
        best = ys.index(min(ys))
        ax.plot([xs[best]], [ys[best]], "*", ms=13, color=line.get_color())
    xs = [float(r[key]) for r in rows]
    ys = [r["final_val_loss"] for r in rows]
    if _spans(xs):
        ax.set_xscale("log")
    if _spans(ys, 10.0):
        ax.set_yscale("log")
    ax.set(xlabel=key, ylabel="final validation loss (nats/token)", title=f"against {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ---- main -----------------------------------------------------------------------------------

def _print_runs(plan: Plan, found: dict[str, str]) -> None:
    width = max(len(c.name) for c in plan.combos)
    print(f"{len(plan.combos)} runs in {plan.dir / 'runs'} (W&B group {plan.group}):")
    for c in plan.combos:
        print(f"{c.name:<{width}}  {found[c.name]:<11}  {' '.join(plan.overrides(c)[:-3])}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_intermixed_args(argv)
    from launch.common import LaunchError, check_all
    from pretrain.configlib import ConfigError
    from pretrain.logs import setup_logging

    setup_logging()
    try:
        check_all("argument", [args.config, str(args.out), *args.grid, *args.overrides])
        plan = make_plan(args)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}\nnothing was started", file=sys.stderr)
        return EXIT_CONFIG
    found = states(plan)
    if args.print_only:
        _print_runs(plan, found)
        return EXIT_OK
    code = EXIT_OK
    if not args.summary:
        code = _start(plan, found, args)
        if args.dry_run:
            return code
        found = states(plan)
    print(write_summary(plan, summary_rows(plan, found)))
    return code


def _start(plan: Plan, found: dict[str, str], args) -> int:
    if not args.dry_run:
        plan.dir.mkdir(parents=True, exist_ok=True)
        (plan.dir / "sweep.json").write_text(json.dumps({
            "config": plan.config, "grid": list(args.grid), "seeds": args.seeds,
            "overrides": plan.user, "runs": [c.name for c in plan.combos]}, indent=1) + "\n")
    todo = [c for c in plan.combos if found[c.name] in ("not started", "stopped", "failed")]
    skipped = {s: sum(1 for c in plan.combos if found[c.name] == s)
               for s in ("finished", "running", "queued")}
    _say(f"{len(todo)} of {len(plan.combos)} runs to start or resume"
         + "".join(f"; {n} {s} (left alone)" for s, n in skipped.items() if n))
    if not todo:
        return EXIT_OK
    if args.launcher == "slurm":
        return submit_array(plan, todo, args)
    return run_local(plan, todo, args)


if __name__ == "__main__":
    sys.exit(main())
