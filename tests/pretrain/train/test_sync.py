"""Sync steps: the device-side non-finite watch names the exact step however late it is read;
every rank gets the same values from one all-gather; the trainer never saves after a NaN and
reads stop flags at sync steps only."""

from __future__ import annotations

import json

import pytest
from helpers.dist import REPO, run_ranks

from pretrain.train.sync import first_problem, next_interval

# Rank r records 6 steps; rank 1's loss is NaN at step 3 and inf at 5, its grad norm inf at 4;
# only rank 1 asks to stop. Both ranks must return identical values.
TWO_RANKS = r"""
import json, sys, torch, torch.distributed as dist
from pretrain.train.sync import DeviceStats
dist.init_process_group("gloo")
rank = dist.get_rank()
stats = DeviceStats(torch.device("cpu"), 2)
for step in range(1, 7):
    loss = float(step + rank)
    if rank == 1 and step == 3:
        loss = float("nan")
    if rank == 1 and step == 5:
        loss = float("inf")
    gnorm = torch.tensor(float("inf") if (rank == 1 and step == 4) else 0.5)
    stats.record(step, torch.tensor(loss), gnorm)
synced = stats.sync(stop=rank == 1, seconds_per_step=0.1 * (rank + 1))
with open(sys.argv[1] + f"/rank{rank}.json", "w") as f:
    json.dump(synced.__dict__, f)
dist.destroy_process_group()
"""


def test_two_ranks_agree_on_loss_stop_and_the_first_non_finite_step(tmp_path):
    run_ranks(["-c", TWO_RANKS, str(tmp_path)], tmp_path / "logs", timeout=120)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1]
    assert got[0]["loss"] == pytest.approx((6.0 + 7.0) / 2)  # step 6, mean over ranks
    assert got[0]["grad_norm"] == 0.5 and got[0]["stop"] is True
    assert got[0]["problem"] == "non-finite loss (nan) at step 3"  # not 4 (gnorm) nor 5
    assert got[0]["seconds_per_step"] == pytest.approx(0.2)  # the slowest rank


def test_first_problem_orders_by_step_then_loss_before_grad_norm():
    row = [0.0] * 10
    assert first_problem([row]) is None
    a = list(row)
    a[4:6] = [2.0, float("inf")]   # device grad norm inf at step 2
    b = list(row)
    b[2:4] = [2.0, float("nan")]   # loss nan at step 2
    b[6:8] = [1.0, float("inf")]   # a host-side grad norm inf at step 1
    assert first_problem([a]) == "non-finite gradient norm (inf) at step 2"
    assert first_problem([a, b]) == "non-finite gradient norm (inf) at step 1"
    b[6:8] = [0.0, 0.0]
    assert first_problem([a, b]) == "non-finite loss (nan) at step 2"


def test_next_interval_bounds_the_wait_for_a_stop_request():
    assert next_interval(0.05, every_steps=10, every_seconds=10.0) == 10
    assert next_interval(2.5, every_steps=10, every_seconds=10.0) == 4
    assert next_interval(60.0, every_steps=10, every_seconds=10.0) == 1  # never 0
    assert next_interval(0.0, every_steps=7, every_seconds=10.0) == 7


def test_nan_found_at_a_later_sync_names_its_step_and_nothing_is_saved(tiny_data, tmp_path):
    """lr 1000 at ZeRO-0 fp32 makes the loss NaN at step 4 (seen with a sync every step);
    with syncs only at step 1 and the step-6 checkpoint, the run still names step 4 and
    writes no checkpoint."""
    def run(name: str, *extra: str) -> str:
        ranks = run_ranks(
            ["-m", "pretrain.train", "--config", str(REPO / "configs/gpt-tiny.yaml"),
             f"run_dir={tmp_path / name}", f"data.path={tiny_data}", "data.seq_len=32",
             "train.max_steps=12", "optim.lr=1000", "optim.grad_clip=0",
             "schedule.warmup_steps=0", "deepspeed.zero_stage=0", "eval.every_steps=0",
             "eval.at_end=false", "logging.progress_bar=false", *extra],
            tmp_path / f"logs_{name}", world_size=1, expect=1)
        return ranks.logs(10**6)

    every = run("every", "logging.every_steps=1", "checkpoint.every_steps=100")
    assert "non-finite loss (nan) at step 4;" in every, every
    sparse = run("sparse", "logging.every_steps=100", "checkpoint.every_steps=6",
                 "train.sync_every_steps=10")
    assert "non-finite loss (nan) at step 4;" in sparse, sparse
    assert "Traceback" not in sparse
    assert not (tmp_path / "sparse" / "checkpoints" / "latest").exists()
    assert not list((tmp_path / "sparse").glob("checkpoints/step_*"))
