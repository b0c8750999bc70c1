"""Ctrl-C through `launch local` (issue 19 item 9): under `timeout`, which relays the SIGINT that
the terminal also sends to the launcher, one Ctrl-C reaches the launcher twice — that is one
request (save and exit 75), not a kill; a Ctrl-C later than SAME_REQUEST_S still kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from launch.common import REPO

SAME_REQUEST_S = 2.0  # pretrain.train.signals.SAME_REQUEST_S (a test checks they agree)
NEVER = "100000"  # a step count no test run reaches


def _launch(tiny_data, run_dir, *extra, wrapper=()):
    """`[wrapper] python -m launch local --nproc 1` on a long tiny run, in a process group of
    its own (what a terminal's foreground job is); output: stdout (the ranks') and stderr."""
    args = [*wrapper, sys.executable, "-m", "launch", "local", "--config",
            str(REPO / "configs" / "gpt-tiny.yaml"), "--nproc", "1", f"run_dir={run_dir}",
            f"data.path={tiny_data}", "data.seq_len=32", f"train.max_steps={NEVER}",
            "train.global_batch_size=2", "train.micro_batch_size=2",
            "logging.progress_bar=false", "logging.wandb.mode=disabled", "eval.every_steps=0",
            "eval.at_end=false", *extra]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"})


def _wait_for(proc, text: str) -> list[str]:
    """The launcher's stdout (the ranks' lines) up to the first line holding `text`."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)}\n{proc.stderr.read()}")


def _finish(proc, timeout=300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_one_ctrl_c_relayed_by_timeout_is_one_request(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = _launch(tiny_data, run, "logging.every_steps=1", f"checkpoint.every_steps={NEVER}",
                   wrapper=("timeout", "600"))
    try:
        _wait_for(proc, "step 3/")
        os.killpg(proc.pid, signal.SIGINT)  # the terminal: timeout and the launcher both get it
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 75, err[-3000:]
    assert "SIGKILL" not in err and err.count("[launch] Ctrl-C: sending SIGTERM") == 1, err
    assert "received SIGTERM: will save a checkpoint and stop after step" in out
    assert "rank exit codes [75] -> 75" in err
    assert (run / "checkpoints" / "latest").is_file()


def test_a_later_ctrl_c_still_kills_without_saving(tiny_data, tmp_path):
    """The ranks sync never (every due step beyond the run): the first Ctrl-C's save does not
    come, so the second, after the window, is what ends them."""
    run = tmp_path / "run"
    proc = _launch(tiny_data, run, f"logging.every_steps={NEVER}",
                   f"checkpoint.every_steps={NEVER}", f"train.sync_every_steps={NEVER}",
                   f"train.sync_every_seconds={NEVER}", "logging.progress_bar=true",
                   "logging.progress_every_seconds=0.5")
    try:
        # A progress line comes after the first step's sync (the first step always syncs); a
        # request before it would be acted on there.
        _wait_for(proc, "progress: step ")
        os.kill(proc.pid, signal.SIGINT)
        _wait_for(proc, "received SIGTERM")
        time.sleep(SAME_REQUEST_S + 0.5)
        os.kill(proc.pid, signal.SIGINT)
        code, _, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 137, err[-3000:]
    assert "[launch] Ctrl-C again: sending SIGKILL to the ranks" in err
    assert not (run / "checkpoints" / "latest").exists()


def test_repeats_within_the_window_are_one_request(monkeypatch):
    from pretrain.train import signals
    from pretrain.train.signals import Repeats

    assert signals.SAME_REQUEST_S == SAME_REQUEST_S
    clock = iter([0.0, 0.5, 1.9, 2.1, 2.2, 5.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    r = Repeats(window=2.0)
    got = [r.is_repeat(signal.SIGINT) for _ in range(5)] + [r.is_repeat(signal.SIGTERM)]
    assert got == [False, True, True, False, True, False]
