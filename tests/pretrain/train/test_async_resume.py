"""checkpoint.async (issue 21) through the two ways a run is stopped and picked up again that
test_async_checkpoint.py leaves out, with real DeepSpeed on gloo ranks:

- Ctrl-C at a terminal (SIGINT to the whole foreground job: each rank and its writer process)
  while a background write is in flight: the writer ignores it, the stop waits for the write,
  commits its own save and exits 75, `latest` names a complete checkpoint, and the resume's
  losses are bitwise those of the straight run.
- Elastic resume: an async checkpoint of 2 ranks resumed on 1 through the universal checkpoint
  (ZeRO-2). As in test_world_size_change.py, another rank count is not bit for bit the 2-rank
  run (it sums the micro-batch gradients in another order), so the exact statement is against
  the same resume from a synchronous checkpoint: losses bitwise equal, and both track the
  2-rank straight run.

ARROWTRAIN_TEST_WRITER_DELAY_S holds each file in the writer for a moment, so that the write is
certainly in flight when the test acts (a checkpoint folder without meta.json, no `latest`)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers.dist import run_ranks, start_ranks

from pretrain.train import checkpoint_meta as cm

ASYNC = ("checkpoint.async=true",)
SLOW_WRITER = {"ARROWTRAIN_TEST_WRITER_DELAY_S": "0.5"}
NO_DROPOUT = ("model.dropout=0.0",)  # a re-shard re-seeds the per-rank dropout streams


def _latest(run: Path) -> str | None:
    path = run / "checkpoints" / cm.LATEST
    return path.read_text().strip() if path.is_file() else None


def _first_write_in_flight(run: Path) -> bool:
    """step 3's folder has files but no meta.json, and no `latest` yet."""
    d = run / "checkpoints" / "step_00000003"
    try:
        return d.is_dir() and any(d.iterdir()) and not (d / cm.META).exists() \
            and _latest(run) is None
    except OSError:
        return False


def test_ctrl_c_mid_write_commits_exits_75_and_resumes_bitwise(straight_run, runs, tiny_data,
                                                               tmp_path):
    run = tmp_path / "run"
    args = runs.small_run_args(run, tiny_data, 1, *ASYNC)
    ranks = start_ranks(args, tmp_path / "logs1", env=SLOW_WRITER)
    codes = ranks.signal_groups_when(lambda: _first_write_in_flight(run),
                                     "the step-3 write in flight", signal.SIGINT)
    logs = ranks.logs(10**6)
    assert codes == [75, 75], logs
    assert "received SIGINT: will save a checkpoint and stop after step" in logs
    assert "Traceback" not in logs and "KeyboardInterrupt" not in logs
    stopped = max(s for s, _ in runs.train_losses(run))
    assert stopped >= 4 and _latest(run) == cm.tag_for(stopped)
    for step in (3, stopped):  # the write in flight, then the stop's own save
        assert cm.is_complete(run / "checkpoints" / cm.tag_for(step)), step

    # resumed with synchronous saves (cheaper: no writer processes); async to async resumes
    # are test_async_checkpoint.py's
    logs = run_ranks([*args, "checkpoint.async=false"], tmp_path / "logs2").logs(10**6)
    assert f"resumed from {run / 'checkpoints' / cm.tag_for(stopped)} at step {stopped}" in logs
    assert runs.train_losses(run) == runs.train_losses(straight_run(1))
    assert _latest(run) == "step_00000008"


def test_async_checkpoint_resumes_on_another_rank_count_as_a_sync_one(
        stopped_run, straight_run, runs, tiny_data, tmp_path):
    stage, at = 2, 4
    sync = runs.copy_run(stopped_run(stage, at, *NO_DROPOUT), tmp_path / "sync")
    run = tmp_path / "async"
    run_ranks(runs.small_run_args(run, tiny_data, stage, *NO_DROPOUT, *ASYNC,
                                  f"train.stop_at_step={at}"), tmp_path / "logs_a", expect=75)
    assert _latest(run) == cm.tag_for(at)
    assert runs.train_losses(run) == runs.train_losses(sync)  # same rank count: bitwise

    for folder in (run, sync):  # both resumed alike: only how the checkpoint was written differs
        one = run_ranks(runs.small_run_args(folder, tiny_data, stage, *NO_DROPOUT,
                                            "train.stop_at_step=6"),
                        tmp_path / f"logs_{folder.name}", world_size=1, expect=75)
        logs = one.logs(10**6)
        assert "re-shard from 2 to 1 ranks" in logs and f"at step {at}" in logs, logs
        assert (folder / "checkpoints" / f"{cm.tag_for(at)}_universal").is_dir()
        assert _latest(folder) == "step_00000006"
    got = runs.train_losses(run)
    assert [s for s, _ in got] == list(range(1, 7))
    assert got == runs.train_losses(sync)  # the elastic resume: bitwise the sync one's
    ref = runs.train_losses(straight_run(0, *NO_DROPOUT))  # 2 ranks, uninterrupted
    for (step, a), (_, b) in zip(got[at:], ref[at:6]):
        assert a == pytest.approx(b, rel=1e-3), f"step {step}: {a} vs {b}"


def test_the_host_ram_pre_flight_names_what_the_arenas_take():
    """The start refuses checkpoint.async where MemAvailable cannot hold this node's staging
    arenas; the figure it names is what the arenas reserve, and it names the way out."""
    from pretrain.train import async_ckpt
    from pretrain.train.checkpoint import human_bytes

    gb = 10**9  # 8 GB checkpoint, 1 GB of weights, 4 ranks on 2 nodes of 2
    assert async_ckpt.node_share_bytes(8 * gb, 0, [0, 1], 4, gb) == 8 * gb  # rank 0 has it all
    assert async_ckpt.node_share_bytes(8 * gb, 0, [2, 3], 4, gb) == 0
    assert async_ckpt.node_share_bytes(8 * gb, 1, [2, 3], 4, gb) == 4 * gb  # split by ZeRO
    assert async_ckpt.node_share_bytes(8 * gb, 3, [0, 1], 4, gb) == 5 * gb  # + rank 0's weights
    assert async_ckpt.arena_bytes(0) == 0
    assert async_ckpt.arena_bytes(16 * gb) == 17 * gb + (16 << 20)  # +6% and 16 MiB
    assert async_ckpt.host_ram_problem(1) is None
    need = 1 << 60  # more than any host has
    problem = async_ckpt.host_ram_problem(need)
    assert problem.startswith(f"checkpoint.async needs ≈ {human_bytes(need)} of host RAM on "
                              "this node for one staged copy of its ranks' share of a checkpoint")
    assert "is available: set checkpoint.async=false" in problem
