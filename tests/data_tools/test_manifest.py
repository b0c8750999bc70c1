"""manifest: the typed model reads exactly the §8 keys, names the file and every bad key, and
the fingerprint covers exactly the token data."""

import copy
import hashlib
import json

import pytest

from data_tools.folder import read_manifest
from data_tools.manifest import (
    FORMAT,
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    fingerprint,
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
            "inputs": [{"path": "a.txt", "size": 3, "format": "line"}], "skipped": {},
            "args": {}, "fingerprint": "", "timing": {}}


def typed(d: dict) -> Manifest:
    return Manifest.from_dict(d, "manifest.json")


def test_fingerprint_is_the_documented_hash():
    m = example()
    key = [1, "uint16", "cd" * 32, [["train", "train/00000.arrow", "ab" * 32]]]
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    assert fingerprint(typed(m)) == hashlib.sha256(canonical).hexdigest()
    other = copy.deepcopy(m)
    other["timing"] = {"wall_s": 3.0}
    other["args"] = {"x": 1}
    assert fingerprint(typed(other)) == fingerprint(typed(m))
    other["splits"]["train"]["shards"][0]["sha256"] = "ef" * 32
    assert fingerprint(typed(other)) != fingerprint(typed(m))


def test_write_then_read_keeps_keys_and_order(tmp_path):
    write_manifest(tmp_path, typed(example()))
    m = read_manifest(tmp_path)
    assert m.fingerprint == fingerprint(typed(example())) and m.inconsistencies() == []
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert list(on_disk) == list(example())  # the §8 keys, in the §8 order
    assert on_disk["tokenizer"]["bos_id"] is None and on_disk["inputs"][0]["format"] == "line"
    assert not [p for p in tmp_path.iterdir() if p.name != "manifest.json"]  # no temp left
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()


def test_folders_written_before_input_formats_were_recorded_still_read(tmp_path):
    old = example()
    old["inputs"] = [{"path": "a.txt", "size": 3}]
    write_manifest(tmp_path, typed(old))
    assert read_manifest(tmp_path).inputs[0].format is None
    assert "format" not in json.loads((tmp_path / "manifest.json").read_text())["inputs"][0]


def _edit(m: dict, case: str) -> None:
    if case == "version 2":
        m["format_version"] = 2
    elif case == "no dtype":
        del m["dtype"]
    elif case == "bad shard":
        del m["splits"]["train"]["shards"][0]["sha256"]
    elif case == "unknown key":
        m["tokenizer"]["vocab"] = 512
    elif case == "string count":
        m["splits"]["train"]["tokens"] = "10"
    elif case == "eos beyond vocab":
        m["tokenizer"]["eos_id"] = 600
    elif case == "no val":
        del m["splits"]["val"]
    elif case == "vocab too big":
        m["tokenizer"]["vocab_size"] = 70_000


@pytest.mark.parametrize("content, message", [
    (None, "manifest.json: not found"),
    ('{"format": ', "manifest.json: line 1 column 12: invalid JSON"),
    ("[1]", "top level is not a JSON object"),
    ("version 2", "key 'format_version' is 2, this code reads 1"),
    ("no dtype", "missing key 'dtype'"),
    ("bad shard", "missing key 'splits.train.shards[0].sha256'"),
    ("unknown key", "unknown key 'tokenizer.vocab'"),
    ("string count", "key 'splits.train.tokens': Input should be a valid integer"),
    ("eos beyond vocab", "key 'tokenizer': eos_id 600 not below vocab_size 512"),
    ("no val", "missing key splits.val"),
    ("vocab too big", "tokenizer.vocab_size 70000 does not fit dtype uint16"),
])
def test_read_manifest_errors_name_the_file_and_key(tmp_path, content, message):
    m = example()
    _edit(m, content or "")
    if content is not None:
        text = content if content.startswith(("{", "[")) else json.dumps(m)
        (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path)
    assert message in str(e.value) and str(tmp_path / "manifest.json") in str(e.value)


def test_all_bad_keys_in_one_message(tmp_path):
    m = example()
    del m["dtype"]
    m["extra"] = 1
    m["splits"]["train"]["shards"][0]["documents"] = -1
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path)
    for part in ("missing key 'dtype'", "unknown key 'extra'",
                 "key 'splits.train.shards[0].documents'"):
        assert part in str(e.value)


def test_inconsistencies_are_named():
    m = example()
    m["fingerprint"] = "0" * 64
    m["splits"]["train"]["tokens"] = 11
    problems = typed(m).inconsistencies()
    assert any("'fingerprint' does not match" in p for p in problems)
    assert any("'splits.train.tokens' is 11, its shards sum to 10" in p for p in problems)


@pytest.mark.parametrize("where, bad", [
    ("shard", "../outside.arrow"), ("shard", "train/../../outside.arrow"),
    ("shard", "/etc/passwd"), ("shard", ""), ("shard", "train/./00000.arrow"),
    ("shard", "train\\00000.arrow"), ("tokenizer", "../tokenizer.json"),
    ("tokenizer", "/tmp/tokenizer.json"),
])
def test_files_outside_the_shard_folder_are_refused_naming_the_key(tmp_path, where, bad):
    m = example()
    if where == "shard":
        m["splits"]["train"]["shards"][0]["file"] = bad
        key = "splits.train.shards[0].file"
    else:
        m["tokenizer"]["file"] = bad
        key = "tokenizer.file"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path)
    assert f"key '{key}'" in str(e.value) and "inside the shard folder" in str(e.value)
