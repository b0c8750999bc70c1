"""`arrowtrain plot RUNDIR [RUNDIR ...]`: runs overlaid in one PNG (matplotlib Agg) with loss
(raw and smoothed), validation loss, grad norm, lr and tokens/s; restarts found from the run's
own run_events.jsonl (a run stopped at step 4 and resumed) and marked."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.dist import REPO

from arrowtrain.commands.plot import ema, labels, main, plot, read_metrics, restarts
from pretrain.train.events import read_events

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def restarted(restarted_run):
    """SMALL_RUN at ZeRO-1 (ZeRO-0 fp32 logs no grad norm) stopped at step 4 (exit 75) and
    resumed to step 8 (tests/conftest.py)."""
    return restarted_run


def test_restarts_come_from_the_runs_events(restarted, straight_run):
    events = [(e["event"], e["step"]) for e in read_events(restarted)]
    assert events == [("start", 0), ("exit", 4), ("start", 4), ("exit", 8)]
    assert [e["code"] for e in read_events(restarted) if e["event"] == "exit"] == [75, 0]
    assert restarts(restarted, read_metrics(restarted)) == [4]
    assert restarts(straight_run(1), read_metrics(straight_run(1))) == []


def test_the_plotted_series_hold_every_step(restarted):
    rows = read_metrics(restarted)
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert all(r["grad_norm"] > 0 for r in train)
    smooth = ema([r["loss"] for r in train], 0.9)
    assert smooth[0] == train[0]["loss"]  # bias-corrected: not pulled towards 0
    assert min(r["loss"] for r in train) <= smooth[-1] <= max(r["loss"] for r in train)
    assert ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]


def test_two_runs_overlay_in_one_png(restarted, straight_run, tmp_path):
    """The command as a real subprocess: the PNG's path alone on stdout, exit 0."""
    out = tmp_path / "both.png"
    res = subprocess.run([sys.executable, "-m", "arrowtrain.commands.plot", str(straight_run(1)),
                          str(restarted), "--out", str(out), "--smooth", "0.5"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000
    one = plot(straight_run(0), tmp_path / "zero0.png")  # no grad norms: the panel says why
    assert one.read_bytes()[:8] == PNG and one.stat().st_size > 10_000
    assert labels([straight_run(1), restarted]) == [straight_run(1).parent.name + "/run",
                                                   restarted.parent.name + "/run"]


def test_bad_input_gets_one_line(tmp_path, restarted, cli):
    res = cli(main, restarted, tmp_path / "empty", "--smooth", "1.5")
    assert res.code == 2 and "--smooth: 1.5 is not in [0, 1)" in res.err
    res = cli(main, restarted, tmp_path / "empty")
    assert res.code == 2 and "Traceback" not in res.err
    assert f"{tmp_path / 'empty' / 'metrics.jsonl'} does not exist" in res.err
