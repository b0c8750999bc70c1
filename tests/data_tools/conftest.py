"""Session fixtures for data_tools tests: a small real corpus (Python stdlib source) and a
byte-level BPE tokenizer trained on it once with the real CLI code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data_tools.dt_util import TRICKY, cli, stdlib_texts, write_jsonl


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """~300 KB of stdlib source plus tricky strings, as one jsonl file."""
    d = tmp_path_factory.mktemp("corpus")
    return write_jsonl(d / "docs.jsonl", stdlib_texts(300_000) + TRICKY)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, corpus) -> Path:
    """vocab 512 with 4 sentinels, trained by `train-tokenizer` on the corpus (+ long x runs so
    that the 50 MB document test tokenizes quickly)."""
    d = tmp_path_factory.mktemp("tok")
    runs = write_jsonl(d / "runs.jsonl", ["x" * 255 + "\n"] * 2000)
    assert cli("train-tokenizer", corpus, runs, "--vocab-size", 512, "--sentinels", 4,
               "--out", d) == 0
    return d / "tokenizer.json"
