"""Packing over the memory-mapped stream, and the refusals of open_data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pretrain.data import DataConfig, DataError
from pretrain.data.synthetic import docs_from_lists, write_folder
from pretrain.objectives import open_data

VOCAB = 512  # as in conftest


def _manifest(folder) -> tuple:
    """(path, dict) of the folder's manifest.json, for a test that edits it by hand."""
    path = folder / "manifest.json"
    return path, json.loads(path.read_text())


def naive_stream(folder, split="train"):
    """doc0 EOS doc1 EOS ... read with plain pyarrow, and the document number of each token."""
    manifest = json.loads((folder / "manifest.json").read_text())
    tokens, docs, n = [], [], 0
    for shard in manifest["splits"][split]["shards"]:
        table = pa.ipc.open_file(str(folder / shard["file"])).read_all()
        for doc in table.column("tokens").to_pylist():
            tokens += [*doc, 0]
            docs += [n] * (len(doc) + 1)
            n += 1
    return np.array(tokens), np.array(docs)


def test_packed_windows_equal_the_naive_stream(clm, folder):
    stream, doc_of = naive_stream(folder)
    T = 8
    n = clm.num_samples("train")
    assert n == (len(stream) - 1) // T
    batch = clm.batch("train", np.arange(n), np.zeros(n, np.int64))
    for i in range(n):
        window = stream[i * T: i * T + T + 1]
        np.testing.assert_array_equal(batch["input_ids"][i], window[:-1])
        np.testing.assert_array_equal(batch["targets"][i], window[1:])
        docs = doc_of[i * T: i * T + T]
        np.testing.assert_array_equal(batch["doc_ids"][i], docs - docs[0])
    assert batch["input_ids"].dtype == np.int64 and batch["doc_ids"].dtype == np.int32


@pytest.mark.parametrize("mean_doc,batch_docs,seq_len", [(1, 1, 4), (2, 7, 5), (40, None, 16),
                                                          (3, 5, 64)])
def test_packing_with_tiny_documents_and_record_batches(tmp_path, make_folder, mean_doc,
                                                        batch_docs, seq_len):
    rng = np.random.default_rng(mean_doc)
    shards = [docs_from_lists([rng.integers(2, 400, rng.geometric(1 / (mean_doc + 1)) - 1)
                               for _ in range(int(rng.integers(1, 120)))]) for _ in range(3)]
    write_folder(tmp_path, {"train": shards, "val": shards[:1]}, VOCAB, batch_docs=batch_docs)
    src = open_data(DataConfig(path=str(tmp_path), seq_len=seq_len), seed=0)
    stream, doc_of = naive_stream(tmp_path)
    n = src.num_samples("train")
    assert n == (len(stream) - 1) // seq_len
    batch = src.batch("train", np.arange(n)[::-1], np.zeros(n, np.int64))
    for row, i in enumerate(range(n - 1, -1, -1)):
        window = stream[i * seq_len: i * seq_len + seq_len + 1]
        np.testing.assert_array_equal(batch["targets"][row], window[1:])
        docs = doc_of[i * seq_len: i * seq_len + seq_len]
        np.testing.assert_array_equal(batch["doc_ids"][row], docs - docs[0])


def test_uint32_shards(tmp_path):
    big = 70_000                                          # vocabulary beyond uint16
    shards = [docs_from_lists([[65_536, 3, 69_999], [5], [66_000, 7]])]
    manifest = write_folder(tmp_path, {"train": shards, "val": shards}, big, batch_docs=2)
    assert manifest["dtype"] == "uint32"
    src = open_data(DataConfig(path=str(tmp_path), seq_len=4), seed=0)
    got = src.batch("train", np.arange(2), np.zeros(2, np.int64))
    assert got["input_ids"].tolist() == [[65_536, 3, 69_999, 0], [5, 0, 66_000, 7]]
    assert got["targets"][1].tolist() == [0, 66_000, 7, 0]


def test_empty_documents_and_windows_across_shards(tmp_path):
    shards = [docs_from_lists([[5, 6, 7], [], [8]]), docs_from_lists([[9], [10, 11, 12, 13]])]
    write_folder(tmp_path, {"train": shards, "val": shards[:1]}, VOCAB, eos_id=0, batch_docs=1)
    src = open_data(DataConfig(path=str(tmp_path), seq_len=3), seed=0)
    # stream: 5 6 7 E | E | 8 E || 9 E | 10 11 12 13 E   (| record batch, || shard)
    got = src.batch("train", np.arange(4), np.zeros(4, np.int64))
    assert got["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 0], [10, 11, 12]]
    assert got["doc_ids"].tolist() == [[0, 0, 0], [0, 1, 2], [0, 1, 1], [0, 0, 0]]
    assert got["targets"][-1].tolist() == [11, 12, 13]


def open_folder(path, **cfg):
    return open_data(DataConfig(path=str(path), seq_len=8, **cfg), seed=0)


def test_refuses_tokenizer_hash_mismatch(tmp_path, make_folder):
    folder = make_folder(tmp_path / "d")
    other = tmp_path / "other_tokenizer.json"
    other.write_text('{"another": "tokenizer"}')
    with pytest.raises(DataError, match="tokenizer hash mismatch") as e:
        open_folder(folder, tokenizer=str(other))
    assert str(folder) in str(e.value) and str(other) in str(e.value)
    open_folder(folder, tokenizer=str(folder / "tokenizer.json"))   # the right one is accepted


def test_refuses_token_id_not_below_vocab(tmp_path):
    shard = docs_from_lists([[3, 4, 5], [6, VOCAB + 7, 8]])
    write_folder(tmp_path, {"train": [shard], "val": [shard]}, VOCAB + 1)
    path, manifest = _manifest(tmp_path)
    manifest["tokenizer"]["vocab_size"] = VOCAB          # ids were written for a larger vocab
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"token id {VOCAB + 7} >= vocab_size {VOCAB}") as e:
        open_data(DataConfig(path=str(tmp_path), seq_len=2), seed=0)
    assert str(tmp_path / "train" / "00000.arrow") in str(e.value)


def test_refuses_corrupt_shard(tmp_path, make_folder):
    folder = make_folder(tmp_path / "d")
    shard = folder / "train" / "00001.arrow"
    data = bytearray(shard.read_bytes())
    data[-64:] = b"\xff" * 64                            # footer overwritten, size unchanged
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt Arrow file") as e:
        open_folder(folder)
    assert str(shard) in str(e.value)


def test_refuses_truncated_and_missing_shards(tmp_path, make_folder):
    folder = make_folder(tmp_path / "d")
    shard = folder / "train" / "00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match="bytes, the manifest says") as e:
        open_folder(folder)
    assert str(shard) in str(e.value)
    shard.unlink()
    with pytest.raises(DataError, match="missing") as e:
        open_folder(folder)
    assert str(shard) in str(e.value)


def test_refuses_empty_split(tmp_path):
    shard = docs_from_lists([[3, 4, 5, 6]] * 5)
    write_folder(tmp_path, {"train": [shard], "val": []}, VOCAB)
    with pytest.raises(DataError, match="the val split is empty") as e:
        open_folder(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_refuses_split_shorter_than_one_sample(tmp_path):
    shard = docs_from_lists([[3, 4, 5]])
    write_folder(tmp_path, {"train": [shard], "val": [shard]}, VOCAB)
    with pytest.raises(DataError, match="fewer than one sample of 9"):
        open_folder(tmp_path)


def test_refuses_other_format_version_and_edited_manifest(tmp_path, make_folder):
    folder = make_folder(tmp_path / "d")
    path, manifest = _manifest(folder)
    path.write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(DataError, match="format_version") as e:
        open_folder(folder)
    assert str(path) in str(e.value)
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="fingerprint"):
        open_folder(folder)


def test_manifest_keys_are_checked_by_the_typed_model(tmp_path, make_folder):
    """A hand-edited manifest: one message naming the file and every bad key."""
    folder = make_folder(tmp_path / "d")
    path, manifest = _manifest(folder)
    manifest["tokenizer"]["vocab"] = manifest["tokenizer"].pop("vocab_size")   # renamed key
    manifest["splits"]["val"]["shards"][0]["tokens"] = "400"                   # a string
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as e:
        open_folder(folder)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "missing key 'tokenizer.vocab_size'" in msg
    assert "unknown key 'tokenizer.vocab'" in msg and "'splits.val.shards[0].tokens'" in msg


def test_refuses_missing_folder_and_mixed_tokenizers(tmp_path, make_folder):
    with pytest.raises(DataError, match="no such shard folder"):
        open_folder(tmp_path / "nope")
    a = make_folder(tmp_path / "a")
    b = make_folder(tmp_path / "b", tokenizer_text='{"other": 1}')
    with pytest.raises(DataError, match="another tokenizer") as e:
        open_data(DataConfig(path=[{"path": str(a), "weight": 1}, {"path": str(b), "weight": 1}],
                             seq_len=8), seed=0)
    assert str(b) in str(e.value)


def test_refuses_a_shard_outside_the_folder_even_with_a_recomputed_fingerprint(
        tmp_path, make_folder):
    """`../outside.arrow`: the real shard moved out of the folder, sizes, hashes and the
    fingerprint all made to match. The typed manifest (which the loader reads) refuses it."""
    import hashlib

    from data_tools.manifest import canonical_json

    folder = make_folder(tmp_path / "d")
    path, m = _manifest(folder)
    entry = m["splits"]["train"]["shards"][0]
    (folder / entry["file"]).rename(tmp_path / "outside.arrow")
    entry["file"] = "../outside.arrow"
    shards = [[split, s["file"], s["sha256"]] for split, info in m["splits"].items()
              for s in info["shards"]]
    m["fingerprint"] = hashlib.sha256(canonical_json(
        [m["format_version"], m["dtype"], m["tokenizer"]["sha256"], shards])).hexdigest()
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="inside the shard folder") as e:
        open_folder(folder)
    assert "splits.train.shards[0].file" in str(e.value)
