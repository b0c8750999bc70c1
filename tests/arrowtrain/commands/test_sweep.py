"""arrowtrain sweep: the grid's runs as ordinary runs in DIR/runs/NAME, resumable (a second call
resumes the stopped run, a third leaves the finished one alone), the summary files, one W&B group; `--print` starts
nothing; bad grids are refused before any run starts, every problem at once; the SLURM job
array script keeps every value intact and selects one run per task."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.dist import REPO

from arrowtrain.commands.sweep import _panel, main, plot_sweep

CONFIG = str(REPO / "configs" / "gpt-tiny.yaml")


@pytest.fixture
def data(tiny_data) -> Path:
    return tiny_data  # tests/conftest.py's, built once per session


def small(data: Path) -> list[str]:
    return [f"data.path={data}", "data.seq_len=32", "train.max_steps=4", "model.dropout=0.0",
            "logging.progress_bar=false", "eval.max_samples=16",
            "model.parametrization=mup", "model.mup_base_width=16"]  # m = 4


def starts(run: Path) -> int:
    return sum(1 for line in (run / "run_events.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "start")


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def test_a_local_sweep_resumes_stopped_runs_and_skips_finished_ones(data, tmp_path, capsys):
    """One run (two DeepSpeed starts: the suite's budget); the muP resume's exactness at every
    ZeRO stage is tests/pretrain/train/test_mup_engine.py's (--slow)."""
    out = tmp_path / "lr-sweep"
    args = ["--config", CONFIG, "--grid", "train.stop_at_step=2", "--out", str(out),
            *small(data)]
    assert main(args) == 75  # stopped (resume me)
    first = capsys.readouterr().out
    assert "| stop_at_step=2 | 2 | 1234 |" in first and "| stopped |" in first
    run = out / "runs" / "stop_at_step=2"
    assert starts(run) == 1 and len(losses(run)) == 2

    assert main(args) == 0  # resumed to the end
    assert starts(run) == 2 and len(losses(run)) == 4
    assert main(args) == 0 and starts(run) == 2  # finished: left alone

    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "train.stop_at_step", "seed", "final_train_loss",
                             "final_val_loss", "tokens_per_sec", "status"]
    assert rows[0]["status"] == "finished" and float(rows[0]["final_train_loss"]) == losses(run)[-1]
    assert float(rows[0]["final_val_loss"]) > 0 and float(rows[0]["tokens_per_sec"]) > 0
    assert "Best final validation loss: **stop_at_step=2**" in (out / "summary.md").read_text()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["logging"]["wandb"]["group"] == "lr-sweep"
    assert cfg["logging"]["wandb"]["name"] == "stop_at_step=2"
    assert cfg["run_dir"] == str(run)
    assert json.loads((out / "sweep.json").read_text())["runs"] == ["stop_at_step=2"]
    last = losses(run)[-1]
    with (run / "metrics.jsonl").open("a") as f:
        f.write('[1, 2]\n{"step": 5, "lo')  # damaged: a line not an object, a cut line
    capsys.readouterr()
    assert main([*args, "--summary"]) == 0 and starts(run) == 2
    assert f"| {last:.4f} |" in capsys.readouterr().out


def test_print_lists_the_runs_and_starts_nothing(data, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["--config", CONFIG, "--grid", "optim.lr=1e-3,3e-3", "--grid",
                 "model.d_model=64,128", "--seeds", "2", "--out", str(out), "--print",
                 *small(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"8 runs in {out / 'runs'} (W&B group s)")
    assert lines[1].split()[:3] == ["lr=1e-3_d_model=64_seed=1234", "not", "started"]
    assert "optim.lr=1e-3 model.d_model=64 seed=1234" in lines[1]
    assert not out.exists()
    assert main(["--config", CONFIG, "--grid", "optim.lr=1e-3,3e-3", "--grid",  # local --dry-run
                 "model.d_model=64,128", "--seeds", "2", "--out", str(out), "--dry-run",
                 *small(data)]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(commands) == 8 and all(c[1:5] == ["-m", "launch", "local", "--config"]
                                      for c in commands)
    first = out / "runs" / "lr=1e-3_d_model=64_seed=1234"
    assert commands[0][-3] == f"run_dir={json.dumps(str(first))}"
    assert not out.exists()


def test_bad_grids_are_refused_at_once_before_any_run(data, tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["--config", CONFIG, "--grid", "optim.lr=1e-3,-1", "--grid", "model.d_model=64,66",
                 "--grid", "optim.lrr=1", "--out", str(out), *small(data)])
    assert code == 2
    err = capsys.readouterr().err
    assert "optim.lrr: unknown key (did you mean `optim.lr`?)" in err and "[every run]" in err
    assert "optim.lr: Input should be greater than 0 (from `optim.lr=-1`)" in err
    assert "n_heads=4 must divide d_model=66" in err
    assert "nothing was started" in err and not out.exists()
    for grid, why in (("seed=1,2", "--grid seed with --seeds"), ("run_dir=a,b", "set by the "),
                      ("optim.lr", "expected KEY=V1,V2"), ("optim.lr=1,1", "appears twice")):
        assert main(["--config", CONFIG, "--grid", grid, "--seeds", "2", "--out", str(out),
                     *small(data)]) == 2
        assert why in capsys.readouterr().err
    assert not out.exists()


NASTY = ["a'; touch pwned; echo '", "$(touch pwned)", "`touch pwned`", "with space"]


def test_the_slurm_array_script_selects_each_run_with_its_values_intact(data, tmp_path,
                                                                         capsys):
    out = tmp_path / NASTY[3]
    grid = "logging.wandb.tags=[" + "],[".join(json.dumps(v) for v in NASTY[:2]) + "]"
    assert main(["--config", CONFIG, "--grid", grid, "--out", str(out), "--launcher", "slurm",
                 "--parallel", "1", "--time", "10:00", "--dry-run", *small(data)]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-1%1\n" in script and "#SBATCH --requeue\n" in script
    path = tmp_path / "a.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    head = script.split("mkdir -p \"$RUN_DIR/slurm\"")[0]
    for task, tag in enumerate(NASTY[:2]):
        probe = f"SLURM_ARRAY_TASK_ID={task}\n{head}\nprintf '%s\\0' \"$RUN_DIR\" " \
                "\"${TRAIN_ARGS[@]}\"\n"
        got = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True,
                             check=True).stdout.decode().split("\0")[:-1]
        assert got[0].startswith(str(out / "runs")) and got[1:3] == ["--config", CONFIG]
        assert f"logging.wandb.tags=[{json.dumps(tag)}]" in got
        assert got[-3] == f"run_dir={json.dumps(got[0])}"
    assert not list(tmp_path.rglob("pwned")) and not out.exists()


def test_the_plot_uses_log_axes_where_the_values_span(tmp_path):
    rows = [{"optim.lr": lr, "model.d_model": w, "final_val_loss": 2 + abs(float(lr) - 4e-3)}
            for lr in ("1e-3", "4e-3", "1.6e-2") for w in ("64", "256")]
    path = plot_sweep(rows, ["optim.lr", "model.d_model"], tmp_path / "v.png")
    assert path.stat().st_size > 10_000
    assert plot_sweep(rows, ["optim.lr"], tmp_path / "w.png") is not None
    assert plot_sweep([{**r, "final_val_loss": None} for r in rows], ["optim.lr"],
                      tmp_path / "x.png") is None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_lr, by_width) = plt.subplots(1, 2)
    _panel(by_lr, rows, "optim.lr", ["model.d_model"])  # 1e-3 .. 1.6e-2: a factor of 16
    narrow = [r for r in rows if r["optim.lr"] != "1.6e-2"]
    _panel(by_width, narrow, "model.d_model", ["optim.lr"])  # 64 and 256: a factor of 4
    assert by_lr.get_xscale() == "log" and by_width.get_xscale() == "log"
    assert [len(line.get_xdata()) for line in by_lr.get_lines()] == [3, 1, 3, 1]  # + stars
    fig.clf()
    _panel(fig.add_subplot(), [r for r in rows if r["model.d_model"] == "64"][:2], "optim.lr",
           [])  # 1e-3 and 4e-3: a factor of 4 -> log; the loss spans less than 10 -> linear
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "linear"
    fig.clf()
    _panel(fig.add_subplot(), [{"k": str(v), "final_val_loss": 1.0 + v} for v in (2, 3, 5)],
           "k", [])  # 2 .. 5: under a factor of 4
    assert fig.axes[0].get_xscale() == "linear"
    plt.close(fig)


@pytest.mark.slow  # two DeepSpeed runs (about 20 s on the 2-core box)
def test_parallel_k_starts_k_runs_before_waiting_for_any(data, tmp_path, capsys):
    out = tmp_path / "par"
    assert main(["--config", CONFIG, "--grid", "seed=1,2,3", "--out", str(out), "--parallel",
                 "2", "--omp-threads", "1", *small(data), "train.max_steps=2"]) == 0
    said = [line.removeprefix("[sweep] ") for line in capsys.readouterr().err.splitlines()
            if line.startswith("[sweep] ")]
    order = [s.split(" (")[0] for s in said if s.startswith("started ") or ": exit" in s]
    assert order[:2] == ["started seed=1", "started seed=2"], said  # two at once
    assert order.index("started seed=3") > min(order.index("seed=1: exit 0"),
                                               order.index("seed=2: exit 0")), said
    with (out / "summary.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["finished"] * 3
