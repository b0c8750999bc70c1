"""kill -9 at random moments — during start-up, mid-step, during a checkpoint save — then
restart: every restart resumes from the newest complete checkpoint, and the finished run's
losses equal the uninterrupted run's bit for bit. 5 trials by default, 20 with --slow."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from helpers.dist import run_ranks, start_ranks

from pretrain.train.checkpoint import META, find_resume_tag, is_complete, read_meta

STAGE = 1


def _wait_for(cond, ranks, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if any(p.poll() is not None for p in ranks.procs):
            return False
        time.sleep(0.005)
    return False


def _saving(ckpt_dir: Path) -> bool:
    """A checkpoint folder exists that has no meta.json yet: a save is in progress."""
    if not ckpt_dir.is_dir():
        return False
    return any(d.is_dir() and d.name.startswith("step_") and not (d / META).exists()
               and any(d.iterdir()) for d in ckpt_dir.iterdir())


def _steps_logged(log: Path) -> int:
    return log.read_text().count(" loss ") if log.exists() else 0


def _kill_at_random(ranks, run: Path, rng: random.Random, mode: str) -> str:
    log0 = ranks.log_paths[0]
    if mode == "startup":
        time.sleep(rng.uniform(0.5, 5.0))
    else:  # after 1-3 steps of this start, mid-step or while a checkpoint is being written
        k = rng.randint(1, 3)
        _wait_for(lambda: _steps_logged(log0) >= k, ranks, 240)
        if mode == "save":
            _wait_for(lambda: _saving(run / "checkpoints"), ranks, 30)
        else:
            time.sleep(rng.uniform(0.0, 0.15))
    victim = rng.randrange(len(ranks.procs))
    if ranks.procs[victim].poll() is None:
        os.kill(ranks.procs[victim].pid, signal.SIGKILL)
    time.sleep(rng.uniform(0.0, 0.2))
    ranks.kill(signal.SIGKILL)  # what a launcher does when one rank dies
    return f"{mode}, rank {victim}"


def test_kill_9_at_random_moments_always_resumes_from_last_complete_checkpoint(
        request, tiny_data, runs, tmp_path):
    trials = 20 if request.config.getoption("--slow") else 5
    max_steps = 8 + 4 * trials  # a start advances at most 4 steps: no trial reaches the end
    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"
    args = runs.small_run_args(run, tiny_data, STAGE, "checkpoint.every_steps=1",
                               "checkpoint.keep_last=2", f"train.max_steps={max_steps}")
    reference = tmp_path / "reference"
    run_ranks(runs.small_run_args(reference, tiny_data, STAGE, f"train.max_steps={max_steps}"),
              tmp_path / "logs_reference")
    rng = random.Random(0)
    modes = ["startup", "save", "step"] + ["save", "step"] * trials
    expect_tag = None
    for trial in range(trials):
        ranks = start_ranks(args, tmp_path / f"logs{trial}")
        what = _kill_at_random(ranks, run, rng, modes[trial])
        logs = ranks.logs(10**6)
        if expect_tag is not None and "training" in logs:
            assert f"resumed from {ckpt_dir / expect_tag}" in logs, f"trial {trial}\n{logs}"
        assert not all(p.returncode == 0 for p in ranks.procs), f"trial {trial} finished"
        expect_tag = find_resume_tag(ckpt_dir)
        if expect_tag is not None:
            assert is_complete(ckpt_dir / expect_tag), f"trial {trial} ({what})"
            step = read_meta(ckpt_dir / expect_tag).step
            assert [s for s, _ in runs.train_losses(run)][:step] == list(range(1, step + 1))

    final = start_ranks(args, tmp_path / "logs_final")
    assert final.wait(240) == [0, 0], final.logs()
    if expect_tag is not None:
        assert f"resumed from {ckpt_dir / expect_tag}" in final.logs(10**6)
    assert runs.train_losses(run) == runs.train_losses(reference)
    assert len(runs.train_losses(run)) == max_steps
    complete = [d.name for d in ckpt_dir.iterdir() if d.is_dir() and is_complete(d)]
    assert sorted(complete) == [f"step_{max_steps - 1:08d}", f"step_{max_steps:08d}"]  # keep 2
