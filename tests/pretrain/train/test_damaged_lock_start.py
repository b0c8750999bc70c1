"""A trainer start on a run folder whose run.lock is damaged (issue 19 item 8): the ranks exit 2
with one message naming the file, not 1 with a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import time

from helpers.dist import REPO, run_python

from pretrain.train.runlock import LOCK_NAME


def _start(run, tiny_data) -> subprocess.CompletedProcess:
    return run_python(["-m", "pretrain.train", "--config",
                       str(REPO / "configs" / "gpt-tiny.yaml"), f"run_dir={run}",
                       f"data.path={tiny_data}", "logging.progress_bar=false",
                       "train.max_steps=2", "logging.wandb.mode=disabled",
                       "eval.at_end=false", "checkpoint.save_at_end=false"],
                      timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})


def test_a_run_lock_that_is_a_directory(tiny_data, tmp_path):
    run = tmp_path / "run"
    (run / LOCK_NAME).mkdir(parents=True)
    res = _start(run, tiny_data)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"{run / LOCK_NAME} is a directory, not a run lock" in res.stderr


def test_a_lock_record_with_a_lease_that_is_no_number_is_judged_by_the_default(tiny_data,
                                                                               tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "lease_s": "abc"}))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    res = _start(run, tiny_data)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "taking over the lock" in res.stderr and "lease 60 s" in res.stderr
