"""`arrowtrain plot RUNDIR [RUNDIR ...]`: runs overlaid in one PNG (matplotlib Agg), one panel
per metric the runs logged (loss raw and smoothed with validation points, val_bpb, val_bleu, grad
norm, lr, tokens/s) and none for a metric no run logged; the smoothed curve is a moving average
over a window of steps that adapts to the run's length, so it stays on the data of a short run;
restarts found from the run's own run_events.jsonl (a run stopped at step 4 and resumed) and
marked."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
from helpers.dist import REPO

from arrowtrain.commands.plot import (
    PANELS,
    draw,
    labels,
    main,
    panels_for,
    plot,
    read_metrics,
    restarts,
    smooth,
    window_steps,
)
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
    steps, loss = [r["step"] for r in train], [r["loss"] for r in train]
    curve = smooth(steps, loss, window_steps(rows, 0.5))  # ±1.75 steps: up to 3 points
    assert curve[0] == pytest.approx((loss[0] + loss[1]) / 2)  # one-sided at the start
    assert curve[-1] == pytest.approx((loss[-2] + loss[-1]) / 2)  # ... and at the end
    assert curve[3] == pytest.approx(sum(loss[2:5]) / 3)
    assert smooth(steps, loss, 0.0) == loss


def test_two_runs_overlay_in_one_png(restarted, straight_run, tmp_path):
    """The command as a real subprocess: the PNG's path alone on stdout, exit 0."""
    out = tmp_path / "both.png"
    res = subprocess.run([sys.executable, "-m", "arrowtrain.commands.plot", str(straight_run(1)),
                          str(restarted), "--out", str(out), "--smooth", "0.5"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000
    one = plot(straight_run(0), tmp_path / "zero0.png")  # no grad norms: no panel for them
    assert one.read_bytes()[:8] == PNG and one.stat().st_size > 10_000
    assert labels([straight_run(1), restarted]) == [straight_run(1).parent.name + "/run",
                                                   restarted.parent.name + "/run"]


def test_bad_input_gets_one_line(tmp_path, restarted, cli):
    res = cli(main, restarted, tmp_path / "empty", "--smooth", "1.5")
    assert res.code == 2 and "--smooth: 1.5 is not in [0, 1]" in res.err
    res = cli(main, restarted, tmp_path / "empty")
    assert res.code == 2 and "Traceback" not in res.err
    assert f"{tmp_path / 'empty' / 'metrics.jsonl'} does not exist" in res.err


def _line(fig, panel: str, label: str):
    """The line labelled `label` in the panel whose title starts with `panel`."""
    ax = next(a for a in fig.axes if a.get_title().startswith(panel))
    return next(ln for ln in ax.get_lines() if ln.get_label() == label)


def test_the_bold_curve_ends_on_the_data_of_a_short_run(straight_run):
    """8 logged steps: the bold train curve's last value is within 10% of the loss range of the
    mean of the last 3 raw points (an EMA over logged rows, weight 0.9, ended far above them)."""
    import matplotlib.pyplot as plt

    run = straight_run(1)
    raw = [r["loss"] for r in read_metrics(run) if "loss" in r]
    fig = draw([run])
    bold = _line(fig, "loss", f"{labels([run])[0]} train").get_ydata()
    plt.close(fig)
    tail, tolerance = statistics.mean(raw[-3:]), 0.1 * (max(raw) - min(raw))
    assert abs(bold[-1] - tail) <= tolerance, (list(bold), raw)
    assert all(min(raw) <= v <= max(raw) for v in bold)


def test_the_window_is_in_steps_not_logged_rows():
    """A noisy falling curve logged every step and the same logged every 10 steps: the window
    (5% of 2000 steps) is the same, so both smoothed curves follow the trend, and agree."""
    steps = list(range(1, 2001))

    def trend(s):
        return 6.0 - 2.0 * s / 2000

    noisy = [trend(s) + (0.2 if (s // 10) % 2 else -0.2) for s in steps]  # ±0.2, period 20
    every = smooth(steps, noisy, 0.05 * 1999)
    sparse_steps = steps[9::10]
    sparse = smooth(sparse_steps, noisy[9::10], 0.05 * 1990)
    assert max(abs(v - trend(s)) for s, v in zip(steps[100:-100], every[100:-100])) < 0.01
    assert max(abs(v - trend(s)) for s, v in zip(steps, every)) < 0.08  # one-sided ends
    assert max(abs(v - trend(s)) for s, v in zip(sparse_steps, sparse)) < 0.08
    assert max(abs(every[s - 1] - v) for s, v in zip(sparse_steps, sparse)) < 0.1
    restarted = smooth([1, 2, 3, 1, 2, 3], [3.0, 2.0, 1.0, 9.0, 8.0, 7.0], 10.0)
    assert restarted == [2.0, 2.0, 2.0, 8.0, 8.0, 8.0]  # steps starting over: smoothed apart


def test_panels_are_the_metrics_logged(straight_run, restarted):
    """ZeRO-0 fp32 logs no grad norm: no grad-norm panel (no empty one); a decoder run logs
    val_bpb: its panel; a translation run's val_bleu gets one; every panel holds lines."""
    import matplotlib.pyplot as plt

    zero0 = [p.key for p in panels_for([read_metrics(straight_run(0))])]
    assert zero0 == ["loss", "val_bpb", "lr", "tokens_per_sec"]
    both = [p.key for p in panels_for([read_metrics(straight_run(0)), read_metrics(restarted)])]
    assert both == ["loss", "val_bpb", "grad_norm", "lr", "tokens_per_sec"]
    seq2seq = [{"step": 1, "loss": 4.0, "lr": 1e-3, "grad_norm": None},
               {"step": 2, "val_loss": 3.5, "val_bleu": 1.5}]
    assert [p.key for p in panels_for([seq2seq])] == ["loss", "val_bleu", "lr"]
    assert {p.key for p in PANELS} >= {"loss", "val_bpb", "val_bleu", "grad_norm", "lr"}
    for runs, keys in (([straight_run(0)], zero0), ([straight_run(0), restarted], both)):
        fig = draw(runs)
        assert len(fig.axes) == len(keys)
        assert all(ax.get_lines() for ax in fig.axes)
        plt.close(fig)
