"""What the suite's shared data folders and trained runs are made of (the fixtures themselves are
in tests/conftest.py): the tiny corpus, the trainer's argv for a shipped config, the small run
every resume/kill/export test compares against, and readers of a run's metrics."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from helpers.dist import REPO

NOUNS = ["cat", "dog", "bird", "fish", "tree", "house", "river", "stone", "cloud", "road"]
VERBS = ["sees", "finds", "likes", "follows", "builds", "paints", "moves", "keeps"]
ADJS = ["red", "small", "old", "quiet", "bright", "green", "tall", "soft"]

# The run every resume/kill/export test compares against: gpt-tiny with dropout 0.1, fp32,
# 8 steps of 8 samples × 32 tokens, 2 micro-batches per rank per step, eval and checkpoints
# along the way.
SMALL_RUN = ("data.seq_len=32", "train.max_steps=8", "train.global_batch_size=8",
             "train.micro_batch_size=2", "checkpoint.every_steps=3", "eval.every_steps=4",
             "eval.max_samples=16", "logging.wandb.mode=disabled")


def write_corpus(path: Path, docs: int = 1500, seed: int = 0) -> Path:
    """Learnable text: short sentences from a tiny grammar, a few per document."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(docs):
            sents = [f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
                     f"the {rng.choice(NOUNS)} ." for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"text": " ".join(sents)}) + "\n")
    return path


def data_tools(*args: str) -> None:
    """The real data_tools command line, in this process (its own tests run it as a
    subprocess too)."""
    from data_tools.__main__ import main

    assert main([str(a) for a in args]) == 0, f"data_tools {args[0]} failed"


def train_args(config: str, run_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    """argv for `python -m pretrain.train` on a shipped config, sized for tests."""
    return ["-m", "pretrain.train", "--config", str(REPO / "configs" / config),
            f"run_dir={run_dir}", f"data.path={data_dir}", "logging.every_steps=1",
            "logging.progress_bar=false", *overrides]


def small_run_args(run_dir: Path, data_dir: Path, stage: int, *extra: str) -> list[str]:
    return train_args("gpt-tiny.yaml", run_dir, data_dir, *SMALL_RUN,
                      f"deepspeed.zero_stage={stage}", *extra)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of a shared run folder, for a test that changes it (a resume, a damaged
    file): the shared runs are read-only for every test."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
