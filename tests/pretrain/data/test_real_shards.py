"""The loader on shards written by the real `data_tools train-tokenizer` and `shard` command
line (in-process: tests/data_tools runs it as a subprocess)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
import torch
from helpers.runs import data_tools
from tokenizers import Tokenizer

from pretrain.data import DataConfig, DataError, train_batches
from pretrain.objectives import open_data

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "arrow", "shards", "stream", "packed", "tokens"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    data_tools("train-tokenizer", root / "corpus.txt", "--vocab-size", "300", "--sentinels", "20",
               "--out", root / "tok")
    data_tools("shard", root / "corpus.txt", "--tokenizer", root / "tok" / "tokenizer.json",
               "--out", root / "shards", "--workers", "1", "--val-fraction", "0.1")
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
    data_tools("train-tokenizer", real / "corpus.txt", "--vocab-size", "280",
               "--out", tmp_path / "other")
    cfg = DataConfig(path=str(real / "shards"), seq_len=32,
                     tokenizer=str(tmp_path / "other" / "tokenizer.json"))
    with pytest.raises(DataError, match="tokenizer hash mismatch"):
        open_data(cfg, seed=0)
