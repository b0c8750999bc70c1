"""Resume on another number of ranks at the same global batch (ZeRO-0): the data position carries over
exactly (design §3), so the resumed run sees the same samples and its losses track the
uninterrupted 2-rank run (not bit for bit: one rank sums the micro-batch gradients in another
order than an all-reduce over two). Dropout is off: its masks come from per-rank RNG streams,
which cannot carry over to another number of ranks."""

from __future__ import annotations

import pytest
from helpers.dist import run_ranks


def test_zero0_stop_on_two_ranks_resume_on_one(tiny_data, runs, tmp_path):
    stage = 0
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = lambda d, *x: runs.small_run_args(d, tiny_data, stage, "model.dropout=0.0", *x)  # noqa: E731
    run_ranks(args(ref), tmp_path / "logs_ref", world_size=2)
    run_ranks(args(run, "train.stop_at_step=4"), tmp_path / "logs_a", world_size=2, expect=75)
    one = run_ranks(args(run), tmp_path / "logs_b", world_size=1)
    assert "at step 4" in one.logs(tail=10_000), one.logs()

    want, got = runs.train_losses(ref), runs.train_losses(run)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
    assert got[:4] == want[:4]  # before the stop: the same 2-rank run
    for (step, a), (_, b) in zip(got[4:], want[4:]):
        assert a == pytest.approx(b, rel=1e-4), f"step {step}: {a} vs {b}"


def test_zero2_resume_on_other_ranks_is_refused_naming_both(tiny_data, runs, tmp_path):
    run = tmp_path / "run"
    args = lambda *x: runs.small_run_args(run, tiny_data, 2, *x)  # noqa: E731
    run_ranks(args("train.stop_at_step=2"), tmp_path / "logs_a", world_size=2, expect=75)
    one = run_ranks(args(), tmp_path / "logs_b", world_size=1, expect=2)
    assert "written by 2 ranks at ZeRO-2, this run has 1" in one.logs(tail=10_000), one.logs()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"  # kept
