"""Rank 0's progress display (issue 18 item 7): on a terminal the log lines go above the bar,
never glued to it; without one (a pipe, a SLURM log) there is no bar — its redraws would pile
into one giant line — but a plain `progress:` line every logging.progress_every_seconds. The
rank learns about the terminal from ARROWTRAIN_TTY (what `launch local` sets: the rank's own
output is the launcher's pipe). DeepSpeed's own INFO lines appear only when asked for."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

from helpers.dist import REPO

GLUED = re.compile(r"(step/s\]|\|)[^\n\r]*?\d\d:\d\d:\d\d \[rank")  # bar text, then a log line
BAR = re.compile(r"train:\s+\d+%\|")  # tqdm's bar (not the logger name pretrain.train:)
DEEPSPEED_INFO = re.compile(r"\[INFO\] \[\w+\.py:\d+:")  # DeepSpeed's own logger's format


def _train(tiny_data, run, tty: str, *extra) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "pretrain.train", "--config",
         str(REPO / "configs" / "gpt-tiny.yaml"), f"run_dir={run}", f"data.path={tiny_data}",
         "data.seq_len=32", "train.max_steps=12", "train.global_batch_size=2",
         "train.micro_batch_size=2", "logging.every_steps=1", "logging.wandb.mode=disabled",
         "eval.every_steps=4", "eval.max_samples=2", "checkpoint.every_steps=6", *extra],
        cwd=REPO, capture_output=True, timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu", "ARROWTRAIN_TTY": tty})
    # bytes decoded here: text=True would turn the bar's carriage returns into newlines
    out, err = res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
    assert res.returncode == 0, err[-3000:]
    # DeepSpeed's INFO chatter (its own handler writes to stdout) only when asked for
    asked = "logging.deepspeed_level=info" in extra
    assert bool(DEEPSPEED_INFO.search(out + err)) == asked, out[-3000:]
    return err


def test_on_a_terminal_log_lines_go_above_the_bar(tiny_data, tmp_path):
    err = _train(tiny_data, tmp_path / "run", "1")
    assert BAR.search(err) and "\r" in err  # the bar is drawn
    assert not GLUED.search(err), GLUED.search(err).group(0)
    for line in ("step 12/12 loss", "saved checkpoint", r"step 4/12 val_loss"):
        assert re.search(rf"(^|[\r\n])\d\d:\d\d:\d\d \[rank 0 [^\]]*\] INFO [\w.]+: {line}", err,
                         re.M), line


def test_without_a_terminal_plain_progress_lines_and_no_bar(tiny_data, tmp_path):
    err = _train(tiny_data, tmp_path / "run", "0", "logging.progress_every_seconds=0.001",
                 "logging.deepspeed_level=info")
    assert not BAR.search(err), BAR.search(err).group(0)
    assert "\r" not in err, repr(err[max(0, err.find("\r") - 300):err.find("\r") + 300])
    lines = re.findall(r"INFO pretrain.train: progress: step (\d+)/12 \(([\d.]+)%\)", err)
    assert lines and all(float(p) == round(100 * int(s) / 12, 1) for s, p in lines), err[-2000:]
    assert "s/step" in err and "ETA" in err


def test_progress_lines_every_n_seconds_and_the_tty_switch(monkeypatch):
    from pretrain.train.progress import Progress, output_is_tty

    assert Progress(10, 0, enabled=False, every_seconds=1, tty=True).mode == "off"
    assert output_is_tty({"ARROWTRAIN_TTY": "1"}) and not output_is_tty({"ARROWTRAIN_TTY": "0"})
    clock = iter([0.0, 1.0, 2.0, 5.0, 11.0, 12.0])
    monkeypatch.setattr("data_tools.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pretrain.train")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        p = Progress(total=100, initial=0, enabled=True, every_seconds=10, tty=False)
        for step in (1, 2, 3, 4, 5):  # at t = 1, 2, 5, 11, 12 s
            p.update(step)
        p.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert stream.getvalue() == ("progress: step 4/100 (4.0%), 2.75 s/step, 0.364 steps/s, "
                                 "ETA 4 min\n")
