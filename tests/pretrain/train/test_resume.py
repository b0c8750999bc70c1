"""Exact resume on 2 gloo ranks with real DeepSpeed: for ZeRO 0-3 (fp32, dropout on), a run
stopped by SIGUSR1 sent to ONE rank and resumed matches the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.dist import start_ranks

from pretrain.train.checkpoint_meta import LATEST, read_meta


def wait_for_metrics_rows(run_dir: Path, ranks, n: int, timeout: float = 240) -> None:
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        if any(p.poll() is not None for p in ranks.procs):
            raise AssertionError(f"a rank exited early\n{ranks.logs()}")
        time.sleep(0.02)
    ranks.kill()
    raise AssertionError(f"no {n} metrics rows after {timeout}s\n{ranks.logs()}")


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of every .wandb file of the run, read back with `wandb leet inspect`."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, f"no .wandb file under {run_dir / 'wandb'}"
    wandb_cli = Path(sys.executable).with_name("wandb")
    records = []
    for f in files:
        out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(f)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return records


# ZeRO-1 runs with --slow only: the kill -9 test resumes ZeRO-1 bit for bit on every CI run.
@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.slow), 2, 3])
def test_sigusr1_to_one_rank_then_resume_is_bitwise_exact(stage, tiny_data, straight_run,
                                                           runs, tmp_path):
    small_run_args, train_losses, read_metrics = (runs.small_run_args, runs.train_losses,
                                                  runs.read_metrics)
    run = tmp_path / "run"
    # Stage 2 also checks W&B offline: history rows and one run id across the restart.
    wandb = ["logging.wandb.mode=offline"] if stage == 2 else []
    args = small_run_args(run, tiny_data, stage, *wandb)

    ranks = start_ranks(args, tmp_path / "logs1")
    wait_for_metrics_rows(run, ranks, 1)
    ranks.procs[1].send_signal(signal.SIGUSR1)  # one rank only
    codes = ranks.wait(240)
    assert codes == [75, 75], f"exit codes {codes}\n{ranks.logs()}"

    tag = (run / "checkpoints" / LATEST).read_text().strip()
    meta = read_meta(run / "checkpoints" / tag)
    stopped_at = meta.step
    assert 1 <= stopped_at < 8
    assert meta.files.keys() >= {"rng_rank0.pt", "rng_rank1.pt"}  # both ranks saved it
    assert [s for s, _ in train_losses(run)] == list(range(1, stopped_at + 1))

    resumed = start_ranks(args, tmp_path / "logs2", env={"SLURM_RESTART_COUNT": "1"})
    assert resumed.wait(240) == [0, 0], resumed.logs()
    assert f"resumed from {run / 'checkpoints' / tag} at step {stopped_at}" in resumed.logs(10**6)

    reference = straight_run(stage)
    assert train_losses(run) == train_losses(reference)  # floats round-trip JSON exactly
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["restart_count"] for r in rows] == [0] * stopped_at + [1] * (8 - stopped_at)
    # the lr comes from the scheduler, whose state the checkpoint carries
    assert [r["lr"] for r in rows] == [r["lr"] for r in read_metrics(reference) if "loss" in r]
    val = [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]
    assert val == [r["val_loss"] for r in read_metrics(reference) if "val_loss" in r]
    assert len(val) == 2  # steps 4 and 8

    if stage == 2:
        records = wandb_records(run)
        run_ids = [r["run"]["run_id"] for r in records if r["type"] == "run"]
        assert len(run_ids) == 2  # one per start: before the stop and after the resume
        assert set(run_ids) == {(run / "wandb_run_id").read_text().strip()}
        assert all(r["run"]["resume"] for r in records if r["type"] == "run")
        steps = [h["history"]["step"]["num"] for h in records if h["type"] == "history"]
        assert steps == list(range(1, 9))  # W&B's own step is the global step, each once
        logged = {h["history"]["item"]["train/step"]: h["history"]["item"]["loss"]
                  for h in records if h["type"] == "history" and "loss" in h["history"]["item"]}
        assert logged == dict(train_losses(run))
