"""Shared fixtures: a tiny tokenizer + shard folder built once per session with the real
data_tools CLI from a corpus generated here, and helpers to run the trainer on 2 gloo ranks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.dist import REPO

NOUNS = ["cat", "dog", "bird", "fish", "tree", "house", "river", "stone", "cloud", "road"]
VERBS = ["sees", "finds", "likes", "follows", "builds", "paints", "moves", "keeps"]
ADJS = ["red", "small", "old", "quiet", "bright", "green", "tall", "soft"]


def _corpus(path: Path, docs: int = 1500, seed: int = 0) -> None:
    """Learnable text: short sentences from a tiny grammar, a few per document."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(docs):
            sents = [f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
                     f"the {rng.choice(NOUNS)} ." for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"text": " ".join(sents)}) + "\n")


def _data_tools(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "data_tools", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"data_tools {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """DATADIR of ~1500 documents, vocab 512 with 100 T5 sentinels."""
    root = tmp_path_factory.mktemp("tiny_data")
    corpus = root / "corpus.jsonl"
    _corpus(corpus)
    _data_tools("train-tokenizer", str(corpus), "--vocab-size", "512", "--sentinels", "100",
                "--out", str(root / "tok"))
    _data_tools("shard", str(corpus), "--tokenizer", str(root / "tok" / "tokenizer.json"),
                "--out", str(root / "data"), "--val-fraction", "0.05", "--workers", "1")
    return root / "data"


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory) -> Path:
    """A pair folder of the synthetic translation task (arrowtrain/demos/translate_task.py):
    1200 pairs, tokenizer learnt from both sides, made with the real data_tools CLI."""
    from arrowtrain.demos.translate_task import make_task

    root = tmp_path_factory.mktemp("pair_data")
    paths = make_task(root / "task", train=1200, test=50)
    fields = ["--source-field", "src", "--target-field", "tgt"]
    _data_tools("train-tokenizer", str(paths["pairs"]), *fields, "--vocab-size", "512",
                "--out", str(root / "tok"))
    _data_tools("shard", str(paths["pairs"]), *fields, "--tokenizer",
                str(root / "tok" / "tokenizer.json"), "--out", str(root / "data"),
                "--val-fraction", "0.1", "--workers", "1")
    return root / "data"


def train_args(config: str, run_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    """argv for `python -m pretrain.train` on a shipped config, sized for tests."""
    return ["-m", "pretrain.train", "--config", str(REPO / "configs" / config),
            f"run_dir={run_dir}", f"data.path={data_dir}", "logging.every_steps=1",
            "logging.progress_bar=false", *overrides]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


# The run every resume/kill/export test compares against: gpt-tiny with dropout 0.1, fp32,
# 8 steps of 8 samples × 32 tokens, 2 micro-batches per rank per step, eval and checkpoints
# along the way.
SMALL_RUN = ("data.seq_len=32", "train.max_steps=8", "train.global_batch_size=8",
             "train.micro_batch_size=2", "checkpoint.every_steps=3", "eval.every_steps=4",
             "eval.max_samples=16", "logging.wandb.mode=disabled")


def small_run_args(run_dir: Path, data_dir: Path, stage: int, *extra: str) -> list[str]:
    return train_args("gpt-tiny.yaml", run_dir, data_dir, *SMALL_RUN,
                      f"deepspeed.zero_stage={stage}", *extra)


@pytest.fixture(scope="session")
def straight_run(tiny_data, tmp_path_factory):
    """straight_run(stage) -> RUNDIR of the uninterrupted SMALL_RUN at that ZeRO stage (run once
    per session, shared by the tests that need a reference)."""
    from helpers.dist import run_ranks

    cache: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in cache:
            root = tmp_path_factory.mktemp(f"straight_zero{stage}")
            run_ranks(small_run_args(root / "run", tiny_data, stage), root / "logs")
            cache[stage] = root / "run"
        return cache[stage]

    return get


@pytest.fixture(scope="session")
def runs():
    """The helpers above for test modules (which cannot import this conftest by name)."""
    import types

    return types.SimpleNamespace(train_args=train_args, read_metrics=read_metrics,
                                 train_losses=train_losses, small_run_args=small_run_args)
