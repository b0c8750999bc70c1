"""Resume on another number of ranks at the same global batch: the data position carries over
exactly (design §3), so the resumed run sees the same samples and its losses track the
uninterrupted 2-rank run (not bit for bit: one rank sums the micro-batch gradients in another
order than an all-reduce over two). ZeRO-0 loads as saved; ZeRO 1-3 go through DeepSpeed's
universal checkpoint, converted once beside the original (pretrain/train/reshard.py), which also
carries a change of stage among 1-3. Dropout is off: its masks come from per-rank RNG streams,
which a re-shard re-seeds."""

from __future__ import annotations

import json
import os

import pytest
from helpers.dist import run_python, run_ranks

from launch.status import collect

STOP = "step_00000004"
UNIVERSAL = STOP + "_universal"


@pytest.fixture(scope="module")
def ref(straight_run, runs):
    """The uninterrupted run on 2 ranks, dropout off (fp32 torch AdamW: the ZeRO stages agree
    to ~1e-7, so one reference serves them all; test_stale_universal.py shares it)."""
    return runs.train_losses(straight_run(0, "model.dropout=0.0"))


def _args(runs, tiny_data, run, stage, *extra):
    return runs.small_run_args(run, tiny_data, stage, "model.dropout=0.0", *extra)


def _assert_tracks(got, want, rel):
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
    for (step, a), (_, b) in zip(got[4:], want[4:]):
        assert a == pytest.approx(b, rel=rel), f"step {step}: {a} vs {b}"


def test_zero0_stop_on_two_ranks_resume_on_one(tiny_data, runs, ref, tmp_path):
    run = tmp_path / "run"
    run_ranks(_args(runs, tiny_data, run, 0, "train.stop_at_step=4"), tmp_path / "logs_a",
              world_size=2, expect=75)
    one = run_ranks(_args(runs, tiny_data, run, 0), tmp_path / "logs_b", world_size=1)
    assert "at step 4" in one.logs(tail=10_000), one.logs()
    assert not (run / "checkpoints" / UNIVERSAL).exists()  # ZeRO-0 loads as it was saved
    got = runs.train_losses(run)
    assert got[:4] == ref[:4]  # before the stop: the same 2-rank run
    _assert_tracks(got, ref, rel=1e-4)


def test_zero2_two_ranks_to_one_then_zero3_on_two(stopped_run, tiny_data, runs, ref, tmp_path):
    """2 ranks ZeRO-2 -> 1 rank ZeRO-2 (through a leftover of a killed conversion) -> 2 ranks
    ZeRO-3 (the universal layout loads at every stage 1-3). The 2-rank stop at step 4 is the
    session's (test_async_resume.py resumes it too)."""
    run = runs.copy_run(stopped_run(2, 4, "model.dropout=0.0"), tmp_path / "run")
    ckpts = run / "checkpoints"
    before = sorted(p.name for p in (ckpts / STOP).iterdir())
    # A conversion killed half-way (its pid is gone): a temp folder, never the real name.
    leftover = ckpts / f".{UNIVERSAL}.tmp999999999" / UNIVERSAL / "zero"
    leftover.mkdir(parents=True)
    (leftover / "optimizer_state.pt").write_bytes(b"cut short")

    one = run_ranks(_args(runs, tiny_data, run, 2, "train.stop_at_step=6"), tmp_path / "logs_b",
                    world_size=1, expect=75)
    logs = one.logs(tail=10_000)
    assert "re-shard from 2 to 1 ranks" in logs and "at step 4" in logs, logs
    assert not leftover.parent.parent.exists()
    assert not [p for p in ckpts.iterdir() if ".tmp" in p.name]
    assert sorted(p.name for p in (ckpts / STOP).iterdir()) == before  # original kept as is
    meta = json.loads((ckpts / UNIVERSAL / "meta.json").read_text())
    assert meta["converted_from"] == STOP and meta["world_size"] == 2
    assert "zero/stack.blocks.0.ffn.up.weight/exp_avg.pt" in meta["files"]
    assert json.loads((ckpts / "step_00000006" / "meta.json").read_text())["world_size"] == 1

    two = run_ranks(_args(runs, tiny_data, run, 3), tmp_path / "logs_c", world_size=2)
    logs = two.logs(tail=10_000)
    assert "re-shard from 1 to 2 ranks, ZeRO-2 to ZeRO-3" in logs and "at step 6" in logs, logs
    _assert_tracks(runs.train_losses(run), ref, rel=1e-3)


def test_zero3_one_rank_to_two_after_offline_conversion(tiny_data, runs, ref, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    run_ranks(_args(runs, tiny_data, run, 3, "train.stop_at_step=4"), tmp_path / "logs_a",
              world_size=1, expect=75)
    assert collect(run)["checkpoint_layout"] == {"ranks": 1, "zero_stage": 3,
                                                 "universal_copy": False}
    res = run_python(["-m", "arrowtrain.commands.export", str(run), "--format", "universal"],
                     timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert res.returncode == 0, res.stderr
    assert f"wrote {ckpts / UNIVERSAL}" in res.stderr
    assert collect(run)["checkpoint_layout"]["universal_copy"] is True
    made = (ckpts / UNIVERSAL / "meta.json").stat()

    two = run_ranks(_args(runs, tiny_data, run, 3), tmp_path / "logs_b", world_size=2)
    logs = two.logs(tail=10_000)
    assert "re-shard from 1 to 2 ranks" in logs and "re-seeded" in logs, logs
    again = (ckpts / UNIVERSAL / "meta.json").stat()  # reused, not converted again
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert collect(run)["checkpoint_layout"]["ranks"] == 2
    _assert_tracks(runs.train_losses(run), ref, rel=1e-3)
