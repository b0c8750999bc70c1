"""A shard damaged on disk after it was written (same size, manifest hashes updated to match, so
the start-up checks pass): reading the damaged window stops with a DataError naming the shard
file and the document, in-process and through a DataLoader worker — never an IndexError."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers.runs import data_tools

from data_tools.manifest import Manifest, sha256_file
from data_tools.validate import validate
from pretrain.data import DataConfig, DataError, train_batches
from pretrain.data.stream import RANGE_CHECK_BLOCK
from pretrain.objectives import open_data

WORDS = ["alpha", "beta", "gamma", "delta", "arrow", "shard", "token", "window", "stream", "x"]
SEQ_LEN = 32


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """Shards from the real CLI; one train shard of > 3 x RANGE_CHECK_BLOCK tokens, so its middle
    is never probed when the folder is opened."""
    root = tmp_path_factory.mktemp("corrupt")
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(1500)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    data_tools("train-tokenizer", root / "corpus.txt", "--vocab-size", "300", "--out", root / "tok")
    data_tools("shard", root / "corpus.txt", "--tokenizer", root / "tok" / "tokenizer.json",
               "--out", root / "clean", "--workers", "1", "--val-fraction", "0.1")
    return root / "clean"


def _buffers(path: Path) -> tuple[int, int, np.ndarray]:
    """(file offset of the list offsets, file offset of the token values, the offsets)."""
    buf = pa.py_buffer(path.read_bytes())
    chunk = pa.ipc.open_file(pa.BufferReader(buf)).read_all().column("tokens").chunks[0]
    _, offsets, _, values = chunk.buffers()
    return (offsets.address - buf.address, values.address - buf.address,
            np.frombuffer(offsets, np.int64).copy())


def damage(clean: Path, out: Path, how: str) -> tuple[Path, int]:
    """Copy the folder, damage document k in the middle of train/00000.arrow in place (same
    size), refresh the manifest's sha256 and fingerprint; returns (shard path, k)."""
    shutil.copytree(clean, out)
    path = out / "train" / "00000.arrow"
    o_at, v_at, offsets = _buffers(path)
    assert offsets[-1] > 3 * RANGE_CHECK_BLOCK
    k = int(np.searchsorted(offsets, offsets[-1] // 2))       # a document in the middle
    data = bytearray(path.read_bytes())
    if how == "token id":
        at = v_at + 2 * int(offsets[k] + 1)                    # its second token (uint16)
        data[at:at + 2] = (65535).to_bytes(2, "little")
    elif how == "offset beyond values":
        data[o_at + 8 * k: o_at + 8 * k + 8] = (10**12).to_bytes(8, "little")
    else:                                                      # "offset going backwards"
        data[o_at + 8 * k: o_at + 8 * k + 8] = int(offsets[k - 2]).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    m = Manifest.read(out)
    m.splits["train"].shards[0].sha256 = sha256_file(path)
    m.write(out)                                               # fingerprint recomputed
    return path, k


@pytest.mark.parametrize("how", ["token id", "offset beyond values", "offset going backwards"])
def test_damaged_window_names_file_and_document(real, tmp_path, how):
    path, k = damage(real, tmp_path / "d", how)
    src = open_data(DataConfig(path=str(tmp_path / "d"), seq_len=SEQ_LEN), seed=0)  # passes
    n = src.num_samples("train")
    with pytest.raises(DataError) as e:
        src.batch("train", np.arange(n), np.zeros(n, np.int64))
    msg = str(e.value)
    assert str(path) in msg and "data_tools validate" in msg
    named = int(msg.split(": document ")[1].split()[0])
    assert k - 2 <= named <= k, msg                            # the damaged one or a neighbour
    if how == "token id":
        assert f"document {k} " in msg and "token id 65535 >= vocab_size 300" in msg
    else:
        assert "list offset" in msg or "out of order" in msg
    assert any(str(path) in p for p in validate(tmp_path / "d"))   # the full check sees it too


def test_damage_seen_through_a_dataloader_worker(real, tmp_path):
    path, k = damage(real, tmp_path / "d", "token id")
    src = open_data(DataConfig(path=str(tmp_path / "d"), seq_len=SEQ_LEN, num_workers=1), seed=0)
    n = src.num_samples("train")
    with pytest.raises(DataError) as e:                         # one micro-batch: every sample
        next(train_batches(src, global_batch=n, micro_batch=n, rank=0, world=1))
    assert str(e.value).startswith(f"{path}: document {k} ")   # no worker traceback around it
    assert "Traceback" not in str(e.value)


def test_clean_folder_reads_every_window(real):
    src = open_data(DataConfig(path=str(real), seq_len=SEQ_LEN), seed=0)
    n = src.num_samples("train")
    batch = src.batch("train", np.arange(n), np.zeros(n, np.int64))
    assert batch["input_ids"].max() < 300 and batch["input_ids"].shape == (n, SEQ_LEN)
