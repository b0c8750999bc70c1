"""kill -9 at random moments — during start-up, mid-step, during a checkpoint save — then
restart: every restart resumes from the newest complete checkpoint, and the finished run's
losses equal the uninterrupted run's bit for bit. 3 trials by default (one of each kind), 20 with --slow.

Every kill is triggered by something the run shows (a line in rank 0's log, config.yaml
rewritten, a checkpoint folder without its meta.json), never by a timer alone, and no start can
pass more than STEPS_PER_START steps before its kill: a start-up kill comes at the latest when the
start's first step is logged, a mid-step kill at the latest one step after its trigger step, a
save kill at the latest two. max_steps leaves room for every trial at that bound, so no trial can
reach the end however fast or slow the machine is. Each victim must have been alive when killed."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from helpers.dist import run_ranks, start_ranks

from pretrain.train.checkpoint_meta import META, find_resume_tag, is_complete, read_meta

STAGE = 1
STEPS_PER_START = 4  # the most steps one start can take before its kill (see above)
START_UP = ("spawned", "starting", "config written", "training")  # start-up kill triggers


def _saving(ckpt_dir: Path) -> bool:
    """A checkpoint folder exists that has no meta.json yet: a save is in progress."""
    if not ckpt_dir.is_dir():
        return False
    return any(d.is_dir() and d.name.startswith("step_") and not (d / META).exists()
               and any(d.iterdir()) for d in ckpt_dir.iterdir())


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _steps_logged(log: Path) -> int:
    return _log(log).count(" loss ")


def _written_since(path: Path, t_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= t_ns
    except OSError:
        return False


def _startup_trigger(ranks, run: Path, rng: random.Random, started_ns: int) -> str:
    """A random start-up moment: one of START_UP (plus up to 0.5 s, except after "training",
    whose first step follows at once), but never after this start's first step is logged."""
    log0 = ranks.log_paths[0]
    event = rng.choice(START_UP)
    seen = {"spawned": lambda: True,
            "starting": lambda: " starting: " in _log(log0),
            "config written": lambda: _written_since(run / "config.yaml", started_ns),
            "training": lambda: " training " in _log(log0)}[event]
    first_step = lambda: _steps_logged(log0) >= 1  # noqa: E731
    ranks.wait_for(lambda: seen() or first_step(), event)
    until = time.monotonic() + (0.0 if event == "training" else rng.uniform(0.0, 0.5))
    ranks.wait_for(lambda: time.monotonic() >= until or first_step(), "the start-up delay")
    return f"start-up after {event!r}"


def _kill_at_random(ranks, run: Path, rng: random.Random, mode: str, started_ns: int) -> str:
    log0 = ranks.log_paths[0]
    if mode == "startup":
        what = _startup_trigger(ranks, run, rng, started_ns)
    else:  # after 1-2 steps of this start, mid-step or while a checkpoint is being written
        k = rng.randint(1, 2)
        ranks.wait_for(lambda: _steps_logged(log0) >= k, f"step {k} of this start")
        if mode == "save":  # checkpoint.every_steps=1: the save of step k or k+1
            ranks.wait_for(lambda: _saving(run / "checkpoints") or _steps_logged(log0) >= k + 2,
                           "a save")
        else:
            until = time.monotonic() + rng.uniform(0.0, 0.15)
            ranks.wait_for(lambda: time.monotonic() >= until or _steps_logged(log0) > k,
                           "the mid-step delay")
        what = f"{mode} after step {k} of this start"
    victim = rng.randrange(len(ranks.procs))
    assert ranks.procs[victim].poll() is None, f"rank {victim} already exited ({what})"
    os.kill(ranks.procs[victim].pid, signal.SIGKILL)
    time.sleep(rng.uniform(0.0, 0.2))
    ranks.kill(signal.SIGKILL)  # what a launcher does when one rank dies
    assert ranks.procs[victim].returncode == -signal.SIGKILL, ranks.logs()
    return f"{what}, rank {victim}"


def test_kill_9_at_random_moments_always_resumes_from_last_complete_checkpoint(
        request, tiny_data, runs, tmp_path):
    trials = 20 if request.config.getoption("--slow") else 3
    max_steps = 8 + STEPS_PER_START * trials  # no trial can reach the end
    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"
    args = runs.small_run_args(run, tiny_data, STAGE, "checkpoint.every_steps=1",
                               "checkpoint.keep_last=2", f"train.max_steps={max_steps}")
    reference = tmp_path / "reference"
    run_ranks(runs.small_run_args(reference, tiny_data, STAGE, f"train.max_steps={max_steps}"),
              tmp_path / "logs_reference")
    rng = random.Random(0)
    modes = ["startup", "save", "step"] * trials
    expect_tag = None
    for trial in range(trials):
        started_ns = time.time_ns()
        ranks = start_ranks(args, tmp_path / f"logs{trial}")
        what = _kill_at_random(ranks, run, rng, modes[trial], started_ns)
        logs = ranks.logs(10**6)
        if expect_tag is not None and "training" in logs:
            assert f"resumed from {ckpt_dir / expect_tag}" in logs, f"trial {trial}\n{logs}"
        assert not any(p.returncode == 0 for p in ranks.procs), f"trial {trial} finished"
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
