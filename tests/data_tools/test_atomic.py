"""The one atomic-write helper: all or nothing, no temp file left, and a temp file left by a
killed writer does not make a shard folder look foreign."""

import json

import pytest

from data_tools.atomic import atomic_path, is_temp_name, temp_name, write_atomic, write_json_atomic
from tests.data_tools.dt_util import cli


def test_replace_is_all_or_nothing(tmp_path):
    p = tmp_path / "f.json"
    write_atomic(p, "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("killed in the middle")
    assert p.read_text() == "old" and list(tmp_path.iterdir()) == [p]
    write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1} and p.read_text().endswith("\n")
    write_atomic(p, b"\x00bytes")
    assert p.read_bytes() == b"\x00bytes" and list(tmp_path.iterdir()) == [p]


def test_temp_names():
    from pathlib import Path
    name = temp_name(Path("/x/manifest.json")).name
    assert name.startswith(".manifest.json.tmp") and is_temp_name(name)
    assert not any(is_temp_name(n) for n in ("manifest.json", ".hidden", ".a.tmp", "a.tmp1"))


def test_leftover_temp_file_is_ours(tmp_path, corpus, tokenizer):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".tokenizer.json.tmp4242").write_text("{")    # a writer killed before its rename
    assert cli("shard", corpus, "--tokenizer", tokenizer, "--out", out, "--workers", 1) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json", "train",
                                                     "val"]
