"""manifest: the fingerprint covers exactly the token data; read_manifest names the file."""

import copy
import hashlib
import json

import pytest

from data_tools.manifest import (
    FORMAT,
    FORMAT_VERSION,
    ManifestError,
    fingerprint,
    read_manifest,
    sha256_file,
    write_manifest,
)


def example() -> dict:
    shard = {"file": "train/00000.arrow", "documents": 2, "tokens": 10, "text_bytes": 30,
             "file_bytes": 500, "sha256": "ab" * 32}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "arrowtrain_version": "0.1.0",
            "dtype": "uint16",
            "tokenizer": {"file": "tokenizer.json", "sha256": "cd" * 32, "vocab_size": 512,
                          "eos_id": 0, "pad_id": 1, "bos_id": None, "sentinel_ids": []},
            "splits": {"train": {"documents": 2, "tokens": 10, "text_bytes": 30,
                                 "shards": [shard]},
                       "val": {"documents": 0, "tokens": 0, "text_bytes": 0, "shards": []}},
            "inputs": [], "skipped": {}, "args": {}, "fingerprint": "", "timing": {}}


def test_fingerprint_is_the_documented_hash():
    m = example()
    key = [1, "uint16", "cd" * 32, [["train", "train/00000.arrow", "ab" * 32]]]
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    assert fingerprint(m) == hashlib.sha256(canonical).hexdigest()
    other = copy.deepcopy(m)
    other["timing"] = {"wall_s": 3.0}
    other["args"] = {"x": 1}
    assert fingerprint(other) == fingerprint(m)
    other["splits"]["train"]["shards"][0]["sha256"] = "ef" * 32
    assert fingerprint(other) != fingerprint(m)


def test_write_then_read(tmp_path):
    write_manifest(tmp_path, example())
    m = read_manifest(tmp_path)
    assert m["fingerprint"] == fingerprint(example())
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("content, message", [
    (None, "manifest.json: not found"),
    ('{"format": ', "manifest.json: line 1 column 12: invalid JSON"),
    ("[1]", "top level is not a JSON object"),
    ("version 2", "format_version is 2, this code reads 1"),
    ("no dtype", "missing key 'dtype'"),
    ("bad shard", "'splits.train.shards[0]' lacks sha256"),
])
def test_read_manifest_errors_name_the_file(tmp_path, content, message):
    m = example()
    if content == "version 2":
        m["format_version"] = 2
    elif content == "no dtype":
        del m["dtype"]
    elif content == "bad shard":
        del m["splits"]["train"]["shards"][0]["sha256"]
    if content is not None:
        text = json.dumps(m) if content in ("version 2", "no dtype", "bad shard") else content
        (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path)
    assert message in str(e.value) and str(tmp_path) in str(e.value)
