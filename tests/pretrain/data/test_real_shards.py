"""The loader on shards written by the real `python -m data_tools train-tokenizer` and `shard`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer

from pretrain.data import DataConfig, DataError, train_batches
from pretrain.objectives import open_data

REPO = Path(__file__).resolve().parents[3]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "arrow", "shards", "stream", "packed", "tokens"]


def data_tools(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYON_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "data_tools", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    data_tools("train-tokenizer", "corpus.txt", "--vocab-size", "300", "--sentinels", "20",
               "--out", "tok", cwd=root)
    data_tools("shard", "corpus.txt", "--tokenizer", "tok/tokenizer.json", "--out", "shards",
               "--workers", "1", "--val-fraction", "0.1", cwd=root)
    return root


def test_real_shards_load_and_decode(real):
    cfg = DataConfig(path=str(real / "shards"), seq_len=32,
                     tokenizer=str(real / "tok" / "tokenizer.json"))
    src = open_data(cfg, seed=0)
    tok = Tokenizer.from_file(str(src.tokenizer_path))
    assert src.vocab_size == tok.get_vocab_size() == 300
    assert src.eos_id == tok.token_to_id(tok.id_to_token(src.eos_id))
    assert len(src.sentinel_ids) == 20
    lines = set((real / "corpus.txt").read_text().splitlines())
    table = pa.ipc.open_file(str(real / "shards" / "train" / "00000.arrow")).read_all()
    doc0, doc1 = table.column("tokens")[0].as_py(), table.column("tokens")[1].as_py()
    assert tok.decode(doc0).strip() in lines
    stream = (doc0 + [src.eos_id] + doc1 + [src.eos_id])[:33]
    first = src.sample("train", 0)                          # sample 0 starts with document 0
    assert first["input_ids"].tolist() == stream[:32] and first["targets"].tolist() == stream[1:]
    assert first["doc_ids"].tolist() == [0 if i <= len(doc0) else 1 for i in range(32)]
    train = json.loads((real / "shards" / "manifest.json").read_text())["splits"]["train"]
    assert src.bytes_per_token("train") == pytest.approx(
        train["text_bytes"] / (train["tokens"] + train["documents"]))     # EOS counted
    batch = next(train_batches(src, 4, 2, 0, 2, 0, num_workers=0))
    assert batch["input_ids"].shape == (2, 32) and int(batch["input_ids"].max()) < 300


def test_real_shards_span_corruption(real):
    cfg = DataConfig(path=str(real / "shards"), objective="span_corruption", input_length=64)
    src = open_data(cfg, seed=0)
    s = src.sample("train", 1)
    sentinels = set(src.sentinel_ids)
    assert [t for t in s["input_ids"].tolist() if t in sentinels] == \
        src.sentinel_ids[: src.objective.span.num_spans]
    assert torch.is_tensor(next(train_batches(src, 2, 2, 0, 1, 0, num_workers=0))["targets"])


def test_real_shards_refuse_another_tokenizer(real, tmp_path):
    data_tools("train-tokenizer", str(real / "corpus.txt"), "--vocab-size", "280",
               "--out", str(tmp_path / "other"), cwd=tmp_path)
    cfg = DataConfig(path=str(real / "shards"), seq_len=32,
                     tokenizer=str(tmp_path / "other" / "tokenizer.json"))
    with pytest.raises(DataError, match="tokenizer hash mismatch"):
        open_data(cfg, seed=0)
