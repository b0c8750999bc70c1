"""Small synthetic shard folders written to the §8 format (pretrain.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.data import DataConfig
from pretrain.data.synthetic import random_docs, write_folder
from pretrain.objectives import open_data

VOCAB = 512
SENTINELS = list(range(400, 512))   # corpus ids stay below 400, so sentinels are recognisable


def _make_folder(path, seed=0, train_tokens=(1500, 1200, 900), val_tokens=(400,), mean_doc=12,
                batch_docs=23, **kw):
    """Several shards, several record batches each; documents of random length, ids in [2, 400)."""
    rng = np.random.default_rng(seed)
    splits = {"train": [random_docs(rng, n, mean_doc, 2, 400) for n in train_tokens],
              "val": [random_docs(rng, n, mean_doc, 2, 400) for n in val_tokens]}
    kw.setdefault("sentinel_ids", SENTINELS)
    write_folder(path, splits, VOCAB, batch_docs=batch_docs, **kw)
    return path


@pytest.fixture(scope="session")
def make_folder():
    """The writer above, for tests that need their own (then damaged) folder."""
    return _make_folder


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("shards") / "a")


@pytest.fixture(scope="session")
def clm(folder):
    return open_data(DataConfig(path=str(folder), seq_len=8), seed=1)


@pytest.fixture(scope="session")
def t5(folder):
    return open_data(DataConfig(path=str(folder), objective="span_corruption", input_length=48,
                                target_length=16), seed=1)
