"""A tiny learnable corpus made into a shard folder with the real data_tools CLI (for tests that
live outside tests/pretrain/train, whose conftest has the same as the `tiny_data` fixture)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from helpers.dist import REPO

NOUNS = ["cat", "dog", "bird", "fish", "tree", "house", "river", "stone", "cloud", "road"]
VERBS = ["sees", "finds", "likes", "follows", "builds", "paints", "moves", "keeps"]
ADJS = ["red", "small", "old", "quiet", "bright", "green", "tall", "soft"]


def _data_tools(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "data_tools", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"data_tools {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"


def make_tiny_data(root: Path, docs: int = 1500, seed: int = 0) -> Path:
    """root/data: short sentences of a tiny grammar, vocab 512, 5% validation."""
    rng = random.Random(seed)
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for _ in range(docs):
            sents = [f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
                     f"the {rng.choice(NOUNS)} ." for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"text": " ".join(sents)}) + "\n")
    _data_tools("train-tokenizer", str(corpus), "--vocab-size", "512", "--out", str(root / "tok"))
    _data_tools("shard", str(corpus), "--tokenizer", str(root / "tok" / "tokenizer.json"),
                "--out", str(root / "data"), "--val-fraction", "0.05", "--workers", "1")
    return root / "data"
