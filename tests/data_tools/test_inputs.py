"""Bad input: each case from the issue is skipped and counted (or, for missing paths, no
documents and a bad tokenizer, refused before any work); --strict stops at the first."""

import gzip
import json
import os

import pytest

from data_tools.folder import read_manifest
from data_tools.inputs import expand_inputs, parse_size
from tests.data_tools.dt_util import cli, stdlib_texts

GOOD = stdlib_texts(6000)[:4]


@pytest.fixture()
def bad_jsonl(tmp_path):
    lines = [json.dumps({"text": GOOD[0]}).encode(),
             b'{"text": "unterminated',  # line 2: invalid JSON
             b'["a", "list"]',  # line 3: not an object
             b'{"body": "no text key"}',  # line 4: missing field
             b'{"text": 42}',  # line 5: non-string field
             b'{"text": "bad \xff\xfe bytes"}',  # line 6: invalid UTF-8
             b'{"text": ""}',  # line 7: empty document
             b'{"text": "lone \\ud800 surrogate"}',  # line 8: not encodable as UTF-8
             json.dumps({"text": GOOD[1]}).encode()]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def shard(tok, out, *inputs_and_flags):
    return cli("shard", *inputs_and_flags, "--tokenizer", tok, "--out", out, "--workers", "1",
               "--val-fraction", "0")


def test_bad_records_are_skipped_counted_and_named(tmp_path, tokenizer, bad_jsonl, caplog):
    caplog.set_level("INFO")
    assert shard(tokenizer, tmp_path / "o", bad_jsonl) == 0
    m = read_manifest(tmp_path / "o")
    assert m.skipped == {"empty": 1, "invalid_json": 1, "invalid_utf8": 2,
                            "missing_field": 1, "non_string_field": 1, "not_object": 1}
    assert m.splits["train"].documents == 2
    err = caplog.text
    for line, reason in [(2, "invalid_json"), (3, "not_object"), (4, "missing_field"),
                         (5, "non_string_field"), (6, "invalid_utf8")]:
        assert f"bad.jsonl:{line}: {reason}" in err  # the first few, by file and line
    summary = next(r.getMessage() for r in caplog.records if "documents (train" in r.getMessage())
    assert "2 documents (train 2, val 0)" in summary and "tokens/s" in summary
    assert "skipped: empty 1, invalid_json 1, invalid_utf8 2, missing_field 1" in summary


def test_strict_stops_at_the_first_bad_record(tmp_path, tokenizer, bad_jsonl, capsys):
    assert shard(tokenizer, tmp_path / "o", bad_jsonl, "--strict") == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: invalid_json" in err and "--strict" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_txt_and_file_formats_skip_invalid_utf8_binary_empty(tmp_path, tokenizer):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_bytes(b"good line\n\xff\xfe bad line\n\n   \nanother good one\n")
    (d / "ok.py").write_text(GOOD[2])
    (d / "blob.bin").write_bytes(b"\x7fELF\0\0\0binary")
    (d / "latin1.py").write_bytes("caf\u00e9 = 1\n".encode("latin-1"))
    (d / "empty.py").write_text("")
    (d / "huge.py").write_text("y = 1\n" * 2000)
    assert shard(tokenizer, tmp_path / "t", d / "a.txt") == 0
    assert read_manifest(tmp_path / "t").skipped == {"invalid_utf8": 1}
    assert shard(tokenizer, tmp_path / "f", d, "--format", "file", "--max-doc-bytes", "10KB") == 0
    m = read_manifest(tmp_path / "f")
    assert m.skipped == {"binary": 1, "empty": 1, "invalid_utf8": 2, "too_large": 1}
    assert m.splits["train"].documents == 1  # ok.py (a.txt is one doc with a bad byte)


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_truncated_compressed_file_keeps_what_was_readable(tmp_path, tokenizer, caplog, suffix):
    import zstandard
    texts = stdlib_texts(400_000)  # real text: repetitive data would compress to one block
    raw = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)
    data = gzip.compress(raw) if suffix == ".gz" else zstandard.ZstdCompressor().compress(raw)
    (tmp_path / f"cut.jsonl{suffix}").write_bytes(data[: len(data) * 3 // 4])
    assert shard(tokenizer, tmp_path / "o", tmp_path / f"cut.jsonl{suffix}") == 0
    m = read_manifest(tmp_path / "o")
    assert m.skipped == {"truncated": 1}
    assert 0 < m.splits["train"].documents < len(texts)
    assert f"cut.jsonl{suffix}:" in caplog.text and "truncated" in caplog.text


def test_corrupt_gzip_is_skipped(tmp_path, tokenizer):
    data = bytearray(gzip.compress(b"".join(f"line {i}\n".encode() for i in range(5000))))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.txt.gz").write_bytes(bytes(data))
    (tmp_path / "ok.txt").write_text("fine\n")
    assert shard(tokenizer, tmp_path / "o", tmp_path / "bad.txt.gz", tmp_path / "ok.txt") == 0
    assert read_manifest(tmp_path / "o").skipped == {"corrupt_compressed": 1}


def test_unreadable_file_is_skipped(tmp_path, tokenizer):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.txt").write_text("readable text\n")
    bad = tmp_path / "in" / "locked.txt"
    if os.geteuid() == 0:  # root ignores permission bits; reading /proc/self/mem fails with EIO
        bad.symlink_to("/proc/self/mem")
    else:
        bad.write_text("secret\n")
        bad.chmod(0)
    assert shard(tokenizer, tmp_path / "o", tmp_path / "in", "--format", "txt") == 0
    m = read_manifest(tmp_path / "o")
    assert m.skipped == {"unreadable": 1} and m.splits["train"].documents == 1


@pytest.mark.parametrize("case", ["missing_path", "empty_folder", "glob_no_match",
                                  "missing_tokenizer", "corrupt_tokenizer"])
def test_refused_before_any_work(tmp_path, tokenizer, corpus, case, capsys):
    inputs, tok = [corpus], tokenizer
    if case == "missing_path":
        inputs = [corpus, tmp_path / "nope.jsonl"]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        inputs = [tmp_path / "empty"]
    elif case == "glob_no_match":
        inputs = [str(tmp_path / "*.jsonl")]
    elif case == "missing_tokenizer":
        tok = tmp_path / "tok" / "tokenizer.json"
    else:
        tok = tmp_path / "tokenizer.json"
        tok.write_text(tokenizer.read_text()[:500])
    assert shard(tok, tmp_path / "o", *inputs) == 2
    err = capsys.readouterr().err
    expected = {"missing_path": "nope.jsonl' does not exist", "empty_folder": "no input files",
                "glob_no_match": "matches no files", "missing_tokenizer": "does not exist",
                "corrupt_tokenizer": "not a valid tokenizers JSON"}[case]
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_errors_name_the_command_as_typed_and_a_folder_of_code_is_read_by_content(
        tmp_path, tokenizer, capsys, caplog):
    """A folder of .py files (an extension auto does not know) is read as one document per
    file, with the INPUT:FORMAT hint; a folder of nothing but binary files is an error that
    names what it skipped, on one line starting with the command as typed."""
    from arrowtrain.cli import main as arrowtrain

    caplog.set_level("INFO")
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("print(1)\n")
    (code / "b.py").write_text("print(2)\n")
    assert arrowtrain(["data", "shard", str(code), "--tokenizer", str(tokenizer), "--out",
                       str(tmp_path / "o"), "--workers", "1", "--val-fraction", "0"]) == 0
    assert "2 files of unknown extension read as one document each (.py 2)" in caplog.text
    assert f"{code}:file" in caplog.text  # the fix, written with the user's own INPUT
    assert read_manifest(tmp_path / "o").splits["train"].documents == 2
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a.png").write_bytes(b"\x89PNG\0\0")
    capsys.readouterr()
    assert arrowtrain(["data", "shard", str(blobs), "--tokenizer", str(tokenizer), "--out",
                       str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arrowtrain data shard: error: no input files found in ") and \
        err.count("\n") == 1
    assert "skipped: binary 1 (.png 1)" in err
    assert cli("validate", tmp_path / "nope") == 2
    assert capsys.readouterr().err.startswith("python -m data_tools validate: error: ")


def test_tokenizer_without_eos_is_refused(tmp_path, tokenizer, corpus, capsys):
    tok = json.loads(tokenizer.read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|endoftext|>"]
    del tok["model"]["vocab"]["<|endoftext|>"]
    (tmp_path / "t.json").write_text(json.dumps(tok))
    assert shard(tmp_path / "t.json", tmp_path / "o", corpus) == 2
    err = capsys.readouterr().err
    assert "has no end-of-document token" in err and "its special tokens: <|pad|>" in err


def test_no_documents_at_all_leaves_nothing(tmp_path, tokenizer, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": ""}\nnot json\n')
    assert shard(tokenizer, tmp_path / "o", tmp_path / "bad.jsonl") == 2
    err = capsys.readouterr().err
    assert "no documents in 1 input files" in err and "empty 1, invalid_json 1" in err
    assert not (tmp_path / "o").exists()
    assert shard(tokenizer, tmp_path / "a" / "b" / "o", tmp_path / "bad.jsonl") == 2
    assert not (tmp_path / "a").exists()                  # parents it made go too
    (tmp_path / "mine").mkdir()                           # a folder the user made stays
    assert shard(tokenizer, tmp_path / "mine", tmp_path / "bad.jsonl") == 2
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_expand_inputs_order_dedup_and_excludes(tmp_path):
    for name in ["b/2.txt", "b/1.txt", "a.txt", ".hidden/x.txt", "b/__pycache__/c.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("t\n")
    files = expand_inputs([str(tmp_path / "b"), str(tmp_path), str(tmp_path / "a.txt")], "auto")
    assert [os.path.relpath(f.path, tmp_path) for f in files] == ["b/1.txt", "b/2.txt", "a.txt"]
    assert parse_size("256MB") == 256 << 20 and parse_size("1.5k") == 1536


def test_tokenizer_without_pad_uses_eos_as_pad(tmp_path, tokenizer, corpus):
    tok = json.loads(tokenizer.read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|pad|>"]
    del tok["model"]["vocab"]["<|pad|>"]
    (tmp_path / "t.json").write_text(json.dumps(tok))
    assert shard(tmp_path / "t.json", tmp_path / "o", corpus) == 0
    info = read_manifest(tmp_path / "o").tokenizer
    assert info.pad_id == info.eos_id == 0


def test_parquet_missing_or_non_string_column_and_nulls(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"content": ["no text column"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"text": ["fine", None, ""]}), tmp_path / "c.parquet")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really parquet")
    assert shard(tokenizer, tmp_path / "o", tmp_path) == 0
    m = read_manifest(tmp_path / "o")
    assert m.skipped == {"empty": 1, "missing_field": 2, "non_string_field": 1,
                            "unreadable": 1}
    assert m.splits["train"].documents == 1


def test_missing_field_names_the_keys_that_are_there(tmp_path, tokenizer, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(json.dumps({"content": "x", "title": "y"}) + "\n"
                                             + json.dumps({"text": GOOD[0]}) + "\n")
    pq.write_table(pa.table({"content": ["no text column"]}), tmp_path / "in" / "b.parquet")
    assert shard(tokenizer, tmp_path / "o", tmp_path / "in") == 0
    assert "a.jsonl:1: missing_field (no key 'text'; its keys: 'content', 'title')" in caplog.text
    assert "b.parquet: missing_field (no column 'text'; its columns: 'content')" in caplog.text
