"""validate: passes on a clean folder; a single flipped byte anywhere in any shard fails and the
message names that shard; a token id out of range is caught even with consistent checksums."""

import json

import numpy as np
import pytest

from data_tools.folder import read_manifest
from data_tools.manifest import sha256_file, write_manifest
from data_tools.validate import validate
from data_tools.writer import write_arrow
from tests.data_tools.dt_util import cli, cli_subprocess, shard_folder


@pytest.fixture(scope="module")
def clean(tmp_path_factory, corpus, tokenizer):
    return shard_folder(tmp_path_factory.mktemp("validate"), corpus, tokenizer, "96KB")


def copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_clean_folder_passes(clean):
    assert validate(clean) == []
    r = cli_subprocess("validate", clean)
    assert r.returncode == 0 and "is valid" in r.stderr


@pytest.mark.parametrize("where", [0.0, 0.37, 0.5, 0.999])
def test_one_flipped_byte_in_any_shard_fails_naming_it(tmp_path, clean, where, capsys):
    m = read_manifest(clean)
    shards = [s.file for info in m.splits.values() for s in info.shards]
    for victim in shards:
        d = copy(clean, tmp_path / victim.replace("/", "_"))
        data = bytearray((d / victim).read_bytes())
        pos = min(int(where * len(data)), len(data) - 1)
        data[pos] ^= 0x01
        (d / victim).write_bytes(bytes(data))
        problems = validate(d)
        assert problems and all(victim in p for p in problems), problems
        assert cli("validate", d) == 2
        err = capsys.readouterr().err
        assert victim in err and "NOT valid" in err and "sha256" in err


def test_token_id_out_of_range_is_caught(tmp_path, clean):
    d = copy(clean, tmp_path / "d")
    m = read_manifest(d)
    entry = m.splits["train"].shards[0]
    vocab = m.tokenizer.vocab_size
    write_arrow(d / entry.file, np.array([0, 3]), np.array([1, 2, vocab], np.uint16), "uint16")
    entry.documents, entry.tokens = 1, 3
    entry.file_bytes, entry.sha256 = (d / entry.file).stat().st_size, sha256_file(d / entry.file)
    m.splits["train"].documents, m.splits["train"].tokens = (
        sum(s.documents for s in m.splits["train"].shards),
        sum(s.tokens for s in m.splits["train"].shards))
    write_manifest(d, m)
    problems = validate(d)
    assert any(f"token id {vocab} >= vocab size {vocab}" in p and entry.file in p
               for p in problems), problems


def test_missing_shard_and_bad_manifest(tmp_path, clean, capsys):
    d = copy(clean, tmp_path / "d")
    (d / "val" / "00000.arrow").unlink()
    assert any("val/00000.arrow: file is missing" in p for p in validate(d))
    (d / "manifest.json").write_text(json.dumps({"format": "arrowtrain-shards",
                                                 "format_version": 1}))
    assert cli("validate", d) == 2
    assert "manifest.json: missing key 'arrowtrain_version'" in capsys.readouterr().err
    (d / "manifest.json").write_text(json.dumps({"format": "x"}))
    assert cli("validate", d) == 2
    assert "manifest.json: key 'format' is 'x'" in capsys.readouterr().err


def test_a_shard_outside_the_folder_is_refused_even_with_a_recomputed_fingerprint(
        tmp_path, clean, capsys):
    """`../outside.arrow` (a real shard, sizes and hashes right, fingerprint recomputed) is
    refused, naming the key (tests/pretrain/data/test_shards.py: the loader refuses it too)."""
    import shutil

    d = copy(clean, tmp_path / "d")
    m = json.loads((d / "manifest.json").read_text())
    entry = m["splits"]["train"]["shards"][0]
    shutil.move(d / entry["file"], tmp_path / "outside.arrow")
    entry["file"] = "../outside.arrow"
    m["fingerprint"] = raw_fingerprint(m)
    (d / "manifest.json").write_text(json.dumps(m))
    assert cli("validate", d) == 2
    err = capsys.readouterr().err
    assert "splits.train.shards[0].file" in err and "inside the shard folder" in err


def raw_fingerprint(m: dict) -> str:
    """The fingerprint of a raw manifest dict, as docs/design.md defines it (the typed model
    refuses the entry under test, so it cannot compute it)."""
    import hashlib

    from data_tools.manifest import canonical_json

    shards = [[split, s["file"], s["sha256"]] for split, info in m["splits"].items()
              for s in info["shards"]]
    key = [m["format_version"], m["dtype"], m["tokenizer"]["sha256"], shards]
    return hashlib.sha256(canonical_json(key)).hexdigest()


def test_a_shard_whose_size_differs_is_not_hashed(tmp_path, clean, monkeypatch):
    """The size is checked first: a shard that cannot match (here a sparse file of 1 GiB where
    the manifest says a few KB) is reported without reading it."""
    import data_tools.validate as validate_mod

    d = copy(clean, tmp_path / "d")
    victim = read_manifest(d).splits["train"].shards[0].file
    with open(d / victim, "r+b") as f:
        f.truncate(1 << 30)  # sparse: no disk used
    hashed = []
    real = validate_mod.sha256_file
    monkeypatch.setattr(validate_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    problems = [p for p in validate(d) if victim in p]
    assert problems and "manifest says" in problems[0] and "size" in problems[0]
    assert not any(str(p).endswith(victim) for p in hashed), hashed
