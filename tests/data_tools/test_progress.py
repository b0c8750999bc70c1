"""Progress of the data commands (issue 18 item 7): on a terminal one bar with the log lines
above it, never glued to it; elsewhere no bar but a plain line every N seconds; train-tokenizer
shows one bar (the tokenizers trainer's own bars are off)."""

from __future__ import annotations

import io
import logging
import re

from data_tools.progress import Progress
from data_tools.tokenizer import build_trainer
from tests.data_tools.dt_util import cli_subprocess


def _logging_to(stream):
    handler = logging.StreamHandler(stream)
    root, logger = logging.getLogger(), logging.getLogger("data_tools")
    root.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    return handler, lambda: (root.removeHandler(handler), logger.setLevel(old))


def test_without_a_terminal_plain_lines_every_n_seconds(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 5.0, 11.0, 12.0])
    monkeypatch.setattr("data_tools.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    _, undo = _logging_to(stream)
    try:
        p = Progress(4_000_000, "shard", tty=False, every_seconds=10)
        for done in (1_000_000, 2_000_000, 2_500_000, 3_000_000, 3_500_000):  # t = 1..12 s
            p.update(done, "9 docs/s")
        p.close()
    finally:
        undo()
    assert stream.getvalue() == ("shard: 3.0 MB of 4.0 MB (75.0%), 272.7 KB/s, ETA 4 s, "
                                 "9 docs/s\n")


def test_on_a_terminal_log_lines_go_above_the_bar(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    handler, undo = _logging_to(stream)
    try:
        p = Progress(100, "shard", unit="docs", tty=True)
        p.update(10)
        logging.getLogger("data_tools").info("a log line")
        p.update(20)
        p.close()
    finally:
        undo()
    out = stream.getvalue()
    assert "shard:" in out and re.search(r"(^|[\r\n])a log line\n", out), out
    assert not re.search(r"\|[^\n\r]*a log line", out)  # not glued to the bar
    assert handler.stream is stream  # put back


def test_train_tokenizer_shows_one_bar_and_no_bar_without_a_terminal(tmp_path, corpus):
    _, trainer = build_trainer(300, 0, 2)
    assert "show_progress: false" in repr(trainer).lower().replace("=", ": ")
    r = cli_subprocess("train-tokenizer", corpus, "--vocab-size", 300, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "learning the merges" in r.stderr
