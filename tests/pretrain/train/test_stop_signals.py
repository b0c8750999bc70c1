"""Ctrl-C on a trainer run directly (issue 18 item 9): the first says after which step the
checkpoint will be saved (and about when) and that a second Ctrl-C stops without saving; the
run saves exactly there and exits 75. A second Ctrl-C (later than SAME_REQUEST_S) stops at
once, exit 130, nothing saved, the exit recorded; one within it is the same request."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from helpers.dist import REPO

SAME_REQUEST_S = 2.0  # pretrain.train.signals.SAME_REQUEST_S
NEVER = "100000"


# Never a sync after the first step (which always syncs): a stop request is not acted on, so
# only a second Ctrl-C ends the run. Rank 0's plain progress lines (no terminal) show that the
# first step's sync is behind it.
NO_SYNC = (f"logging.every_steps={NEVER}", f"train.sync_every_steps={NEVER}",
           f"train.sync_every_seconds={NEVER}", "logging.progress_bar=true",
           "logging.progress_every_seconds=0.5")


def _start(tiny_data, run, *extra):
    args = [sys.executable, "-m", "pretrain.train", "--config",
            str(REPO / "configs" / "gpt-tiny.yaml"), f"run_dir={run}", f"data.path={tiny_data}",
            "data.seq_len=32", f"train.max_steps={NEVER}", "train.global_batch_size=2",
            "train.micro_batch_size=2", "logging.progress_bar=false",
            "logging.wandb.mode=disabled", "eval.every_steps=0", "eval.at_end=false",
            f"checkpoint.every_steps={NEVER}", *extra]  # a later override wins
    return subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env={**os.environ, "DS_ACCELERATOR": "cpu",
                                            "ARROWTRAIN_TTY": "0"})


def _wait_for(proc, text: str) -> str:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)}")


def _finish(proc) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_first_ctrl_c_says_when_it_saves_and_saves_there(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = _start(tiny_data, run, "logging.every_steps=3",
                  f"train.sync_every_seconds={NEVER}")  # syncs at the logged steps, however slow
    _wait_for(proc, "step 3/")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # the same request (a wrapper relaying it)
    code, err = _finish(proc)
    assert code == 75, err[-3000:]
    said = re.search(r"received SIGINT: will save a checkpoint and stop after step (\d+) \(step "
                     r"(\d+) is in progress; about [\d.]+ (s|min) from now\); Ctrl-C again \(more "
                     r"than 2 s from now\) stops at once without saving", err)
    assert said, err[-3000:]
    at = int(said.group(1))
    assert at % 3 == 0 and at >= int(said.group(2))  # the next logged step syncs
    assert err.count("received SIGINT") == 1 and "stopping now" not in err
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{at:08d}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_second_ctrl_c_stops_at_once_without_saving(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = _start(tiny_data, run, *NO_SYNC)
    _wait_for(proc, "progress: step ")  # after the first step's sync: no sync comes again
    proc.send_signal(signal.SIGINT)
    _wait_for(proc, "received SIGINT")
    time.sleep(SAME_REQUEST_S + 0.5)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    assert code == 130, err[-3000:]
    assert "received SIGINT again: stopping now, without saving" in err
    assert not (run / "checkpoints" / "latest").exists()
    events = [json.loads(line) for line in (run / "run_events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "exit" and events[-1]["code"] == 130
    assert not (run / "run.lock").exists()
