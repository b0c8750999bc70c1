"""How inputs are cut into documents: `.txt` by --txt-mode (line | paragraph | file), any input
by its own INPUT:FORMAT suffix; the manifest records it and `inspect` says it."""

import gzip
import json

import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from data_tools.folder import read_manifest
from data_tools.inputs import expand_inputs, iter_records, split_format_suffix
from tests.data_tools.dt_util import cli

LICENCE = ("Permission is hereby granted, free of charge, to any person obtaining a copy\n"
           "of this software and associated documentation files (the \"Software\"), to deal\n"
           "in the Software without restriction.\n"
           "\n"
           "The above copyright notice and this permission notice shall be included in all\n"
           "copies or substantial portions of the Software.\n"
           "\n   \n"
           "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND.\n")


@pytest.fixture
def licences(tmp_path):
    """Five licence files of 4 paragraphs and 7 non-blank lines each: the new user's corpus."""
    d = tmp_path / "licences"
    d.mkdir()
    for i in range(5):
        (d / f"LICENSE-{i}.txt").write_text(f"Copyright {2020 + i} Someone\n\n" + LICENCE)
    return d


def shard(tokenizer, out, *args):
    return cli("shard", *args, "--tokenizer", tokenizer, "--out", out, "--workers", "1",
               "--val-fraction", "0")


def stored_texts(out):
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    m = read_manifest(out)
    texts = []
    for _, s in m.shards():
        with pa.memory_map(str(out / s.file)) as src:
            for ids in pa.ipc.open_file(src).read_all().column("tokens").to_pylist():
                texts.append(tok.decode(ids, skip_special_tokens=False))
    return texts


@pytest.mark.parametrize("how, documents", [
    ([], 35),                                   # default: one per non-blank line
    (["--txt-mode", "paragraph"], 20),
    (["--txt-mode", "file"], 5),
    ([":file"], 5),                             # the folder's own format, as a suffix
    ([":paragraph"], 20),
])
def test_licence_files_cut_as_asked(tmp_path, tokenizer, licences, how, documents, capsys):
    inputs = [f"{licences}{how[0]}"] if how[:1] and how[0].startswith(":") else [licences, *how]
    out = tmp_path / "o"
    assert shard(tokenizer, out, *inputs) == 0
    m = read_manifest(out)
    assert m.splits["train"].documents == documents
    mode = how[-1].lstrip(":") if how else "line"
    assert [i.format for i in m.inputs] == [mode] * 5
    assert m.args["txt_mode"] == (how[1] if how[:1] == ["--txt-mode"] else "line")
    if mode == "file":
        assert sorted(stored_texts(out)) == sorted(p.read_text() for p in licences.iterdir())
    if mode == "paragraph":
        assert LICENCE.split("\n\n")[1] in stored_texts(out)  # line ends inside are kept
    capsys.readouterr()
    assert cli("inspect", out) == 0
    report = capsys.readouterr().out
    expected = {"line": "one per non-blank line", "paragraph": "one per paragraph",
                "file": "one per file"}[mode]
    assert f"documents: 5 input files ({mode}): {expected}" in report
    assert ("--txt-mode file, or INPUT:file" in report) == (mode == "line")


def test_mixed_inputs_each_with_its_own_format(tmp_path, tokenizer, licences):
    (tmp_path / "notes.txt").write_text("first note\nsecond note\n")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "a json doc"}) + "\n")
    out = tmp_path / "o"
    assert shard(tokenizer, out, f"{licences}/:file", tmp_path / "notes.txt",
                 tmp_path / "docs.jsonl") == 0
    m = read_manifest(out)
    assert [i.format for i in m.inputs] == ["file"] * 5 + ["line", "jsonl"]
    assert m.splits["train"].documents == 5 + 2 + 1
    assert m.args["inputs"][0] == f"{licences}/:file"


def test_paragraph_reader_edges(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"\n\none\r\ntwo\r\n\r\n  \t\nthree\n\n\nbig " + b"x" * 100 + b"\n\nfour")
    files = expand_inputs([f"{p}:paragraph"], "auto")
    recs = list(iter_records(files[0], "text", max_doc_bytes=50))
    kinds = [getattr(r, "text", None) or r.reason for _, r in recs]
    assert kinds == ["one\r\ntwo", "three", "too_large", "four"]
    assert [i for i, _ in recs] == [2, 6, 9, 11]              # first line of each, 0-based
    assert recs[2][1].where == f"{p}:10"


def test_whole_file_mode_reads_compressed_text(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"line one\nline two\n"))
    files = expand_inputs([str(tmp_path)], "auto", txt_mode="file")
    assert [f.fmt for f in files] == ["file"]
    [(_, doc)] = list(iter_records(files[0], "text", max_doc_bytes=1 << 20))
    assert doc.text == "line one\nline two\n"


def test_format_suffix_rules(tmp_path, capsys, tokenizer):
    odd = tmp_path / "odd:file"                                  # a real name with a colon
    odd.write_text("x\n")
    assert split_format_suffix(str(odd)) == (str(odd), None)
    assert split_format_suffix("notes/:file") == ("notes/", "file")
    assert split_format_suffix("notes/:nonsense") == ("notes/:nonsense", None)
    (tmp_path / "notes").mkdir()
    assert shard(tokenizer, tmp_path / "o", f"{tmp_path / 'notes'}:pdf") == 2
    err = capsys.readouterr().err
    assert "does not exist (a format suffix is one of jsonl, json, txt, parquet, file, line, " \
           "paragraph)" in err
    assert not (tmp_path / "o").exists()


def test_train_tokenizer_takes_the_same_formats(tmp_path, licences, caplog):
    caplog.set_level("INFO")
    assert cli("train-tokenizer", f"{licences}:file", "--vocab-size", 300,
               "--out", tmp_path / "tok") == 0
    assert "on 5 documents from 5 files" in caplog.text


@pytest.fixture
def first_day(tmp_path):
    """A new user's folder: text under many extensions (and none), a compressed changelog,
    binary files, a Latin-1 file, a .txt file and the usual hidden and cache entries."""
    d = tmp_path / "corpus"
    for name, text in {"README": "A readme without an extension.\n",
                       "docs/guide.md": "# Guide\n\nSome *markdown* text.\n",
                       "docs/api.rst": "API\n===\n\nThe reference.\n",
                       "docs/index.html": "<html><body>hello</body></html>\n",
                       "tool.py": "def f():\n    return 1\n",
                       "notes.txt": "first note\nsecond note\n",
                       ".git/config": "[core]\n", "__pycache__/tool.cpython.pyc": "x"}.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    (d / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (d / "docs" / "data.bin").write_bytes(b"\0\1\2\3" * 100)
    (d / "archive.tar.gz").write_bytes(gzip.compress(b"README\0\0\0\0" + b"\0" * 500))
    (d / "latin1.csv").write_bytes("caf\u00e9;cr\u00e8me\n".encode("latin-1"))
    return d


CHANGELOG = "pkg (1.0) unstable; urgency=low\n\n  * Initial release.\n"
BY_CONTENT = "(no extension) 1, .debian.gz 1, .html 1, .md 1, .py 1, .rst 1"
NOT_TEXT = "binary 3 (.bin 1, .png 1, .tar.gz 1), invalid_utf8 1 (.csv 1)"


def test_auto_reads_unknown_text_and_reports_what_it_left_out(tmp_path, tokenizer, first_day,
                                                              caplog, capsys):
    """--format auto on a folder: text files of unknown extension are one document each,
    binary and undecodable files are counted by extension, and train-tokenizer, shard and
    inspect all say so with the fix; nothing is dropped silently."""
    caplog.set_level("INFO")
    assert cli("train-tokenizer", first_day, "--vocab-size", 300, "--out", tmp_path / "tok") == 0
    log = caplog.text
    assert f"6 files of unknown extension read as one document each ({BY_CONTENT})" in log
    assert f"{first_day}:paragraph" in log  # the fix, written with the user's own INPUT
    assert f"skipped 4 files that are not UTF-8 text: {NOT_TEXT}" in log
    assert "--exclude" in log and ".git/" in log and "__pycache__/" in log
    assert "on 8 documents from 7 files" in log
    caplog.clear()
    out = tmp_path / "o"
    assert shard(tokenizer, out, first_day) == 0
    assert f"skipped 4 files that are not UTF-8 text: {NOT_TEXT}" in caplog.text
    m = read_manifest(out)
    formats = {i.path.split("/")[-1]: i.format for i in m.inputs}
    assert formats == {"README": "file", "changelog.Debian.gz": "file", "api.rst": "file",
                       "guide.md": "file", "index.html": "file", "notes.txt": "line",
                       "tool.py": "file"}
    assert m.splits["train"].documents == 8 and CHANGELOG in stored_texts(out)
    assert m.skipped == {"binary": 3, "invalid_utf8": 1}
    assert m.skipped_files == {"binary": {".bin": 1, ".png": 1, ".tar.gz": 1},
                               "invalid_utf8": {".csv": 1}}
    capsys.readouterr()
    assert cli("inspect", out) == 0
    report = capsys.readouterr().out
    assert f"documents: 6 input files (file): one per file ({BY_CONTENT})" in report
    assert f"files skipped by content: {NOT_TEXT}" in report
    assert cli("inspect", out, "--json") == 0
    assert json.loads(capsys.readouterr().out)["skipped_files"] == m.skipped_files


def test_explicit_files_of_unknown_extension(tmp_path, tokenizer, first_day, capsys):
    """Named on the command line: text is one document; a binary file is an error."""
    assert shard(tokenizer, tmp_path / "o", first_day / "tool.py") == 0
    assert [i.format for i in read_manifest(tmp_path / "o").inputs] == ["file"]
    assert shard(tokenizer, tmp_path / "p", first_day / "logo.png") == 2
    err = capsys.readouterr().err
    assert "logo.png" in err and "not UTF-8 text (binary" in err
    assert not (tmp_path / "p").exists()


def test_json_files_pretty_printed_arrays_and_lines(tmp_path, tokenizer, caplog):
    """.json: a pretty-printed object is one record, an array is one record per element, JSON
    lines stay lines; a record without the field names the keys it has."""
    d = tmp_path / "j"
    d.mkdir()
    (d / "one.json").write_text(json.dumps({"text": "a single pretty object", "id": 1}, indent=2))
    (d / "many.json").write_text(json.dumps([{"text": f"record {i}"} for i in range(3)]
                                            + [{"body": "x", "title": "y"}], indent=2))
    (d / "lines.json").write_text('{"text": "line one"}\n{"text": "line two"}\n')
    (d / "flat.json").write_text(json.dumps([{"text": "flat a"}, {"text": "flat b"}]))
    (d / "zipped.json.gz").write_bytes(gzip.compress(json.dumps({"text": "zipped"}, indent=1)
                                                     .encode()))
    out = tmp_path / "o"
    assert shard(tokenizer, out, d) == 0
    m = read_manifest(out)
    assert [(i.path.split("/")[-1], i.format) for i in m.inputs] == [
        ("flat.json", "json"), ("lines.json", "jsonl"), ("many.json", "json"),
        ("one.json", "json"), ("zipped.json.gz", "json")]
    assert sorted(stored_texts(out)) == sorted(["flat a", "flat b", "line one", "line two",
                                                "record 0", "record 1", "record 2",
                                                "a single pretty object", "zipped"])
    assert m.skipped == {"missing_field": 1}
    assert f"{d / 'many.json'}[3]: missing_field (no key 'text'; its keys: 'body', 'title')" \
        in caplog.text
