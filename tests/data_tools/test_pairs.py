"""Pairs (source -> target): train-tokenizer and shard from jsonl/parquet fields and from two
aligned text files; pair shards (`source`, `target`, no EOS stored), the manifest's `kind`,
skipped pairs by reason, --workers independence, resume, validate and inspect."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from data_tools.folder import read_manifest
from data_tools.manifest import Manifest, ManifestError
from data_tools.writer import ShardWriter
from tests.data_tools.dt_util import cli, read_tree, stdlib_texts

BAD_RECORDS = [  # (line, reason it is skipped for)
    ('{"de": "", "en": "empty source"}', "empty_source"),
    ('{"de": "leere Ziel", "en": "   "}', "empty_target"),
    ('{"de": "nur Quelle"}', "missing_field"),
    ('{"de": "Zahl", "en": 5}', "non_string_field"),
    ('{"de": "kaputt", ', "invalid_json"),
]


def sentences(n: int) -> list[tuple[str, str]]:
    """Real text on both sides (stdlib lines), the target a different line than the source."""
    lines = [x.strip() for t in stdlib_texts(200_000) for x in t.splitlines() if x.strip()]
    return [(lines[i][:120], lines[i + 1][:80]) for i in range(n)]


def write_pairs(path, pairs, bad=()):
    with open(path, "w", encoding="utf-8") as f:
        for s, t in pairs:
            f.write(json.dumps({"de": s, "en": t}) + "\n")
        for line in bad:
            f.write(line + "\n")
    return path


def rows(out):
    """(source ids, target ids) of every stored pair, in split/shard/row order."""
    m = read_manifest(out)
    got = []
    for _, s in m.shards():
        with pa.memory_map(str(out / s.file)) as src:
            t = pa.ipc.open_file(src).read_all()
        assert t.column_names == ["source", "target"]
        got += list(zip(t.column("source").to_pylist(), t.column("target").to_pylist()))
    return got


def shard_pairs(out, tokenizer, *inputs, extra=()):
    return cli("shard", *inputs, "--tokenizer", tokenizer, "--out", out, "--val-fraction", "0.1",
               "--shard-size", "8KB", *extra)


@pytest.fixture(scope="module")
def pcorpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    good = sentences(600)
    jsonl = write_pairs(d / "pairs.jsonl", good, [b for b, _ in BAD_RECORDS])
    (d / "src.txt").write_text("".join(s + "\n" for s, _ in good) + "\nnur Quelle\n")
    (d / "tgt.txt").write_text("".join(t + "\n" for _, t in good) + "no source\n\n")
    return d, good, jsonl


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory, pcorpus, tokenizer):
    d, _, jsonl = pcorpus
    out = tmp_path_factory.mktemp("pd") / "data"
    assert shard_pairs(out, tokenizer, jsonl, "--source-field", "de", "--target-field", "en",
                       extra=["--workers", "1"]) == 0
    return out


def test_jsonl_pairs_round_trip_without_eos(pair_data, pcorpus):
    _, good, _ = pcorpus
    tok = Tokenizer.from_file(str(pair_data / "tokenizer.json"))
    got = sorted((tok.decode(s), tok.decode(t)) for s, t in rows(pair_data))
    assert got == sorted(good)
    eos = read_manifest(pair_data).tokenizer.eos_id
    assert all(eos not in s and eos not in t and s and t for s, t in rows(pair_data))


def test_manifest_says_pairs_and_counts_each_side_and_each_skip(pair_data):
    m = read_manifest(pair_data)
    assert m.kind == "pairs" and m.is_pairs and m.columns == ("source", "target")
    assert m.skipped == {reason: 1 for _, reason in BAD_RECORDS}
    stored = rows(pair_data)
    assert sum(info.documents for info in m.splits.values()) == len(stored) == 600
    assert sum(info.source_tokens for info in m.splits.values()) == sum(len(s) for s, _ in stored)
    assert sum(info.target_tokens for info in m.splits.values()) == sum(len(t) for _, t in stored)
    for _, s in m.shards():
        assert s.tokens == s.source_tokens + s.target_tokens
    assert len(m.splits["train"].shards) > 2 and m.splits["val"].documents > 20
    assert m.args["source_field"] == "de" and m.inconsistencies() == []


def test_aligned_text_files_give_the_same_shards(tmp_path, pair_data, pcorpus, tokenizer):
    """Same pairs from two aligned text files: same token data (fingerprint); a blank line is
    an empty side, skipped and counted."""
    d, _, _ = pcorpus
    out = tmp_path / "aligned"
    assert shard_pairs(out, tokenizer, extra=["--source-file", d / "src.txt", "--target-file",
                                              d / "tgt.txt", "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m.fingerprint == read_manifest(pair_data).fingerprint
    assert m.skipped == {"empty_source": 1, "empty_target": 1}
    assert [(i.format, i.path) for i in m.inputs] == [("source", str(d / "src.txt")),
                                                       ("target", str(d / "tgt.txt"))]


def test_workers_do_not_change_a_byte(tmp_path, pair_data, pcorpus, tokenizer):
    _, _, jsonl = pcorpus
    out = tmp_path / "w2"
    assert shard_pairs(out, tokenizer, jsonl, "--source-field", "de", "--target-field", "en",
                       extra=["--workers", "2"]) == 0
    assert read_tree(out) == read_tree(pair_data)


def test_parquet_pairs(tmp_path, pcorpus, tokenizer):
    _, good, _ = pcorpus
    table = pa.table({"de": [s for s, _ in good[:50]] + [None],
                      "en": [t for _, t in good[:50]] + ["no source"]})
    pq.write_table(table, tmp_path / "p.parquet")
    out = tmp_path / "pq"
    assert shard_pairs(out, tokenizer, tmp_path / "p.parquet", "--source-field", "de",
                       "--target-field", "en", extra=["--workers", "1"]) == 0
    m = read_manifest(out)
    assert m.is_pairs and m.skipped == {"missing_field": 1}
    assert sum(i.documents for i in m.splits.values()) == 50


def test_interrupted_pair_run_resumes_to_identical_output(tmp_path, pcorpus, tokenizer,
                                                          monkeypatch):
    """Stopped after its third shard (pending pairs and val candidates saved), the same
    command finishes with the bytes of an uninterrupted run."""
    _, _, jsonl = pcorpus
    args = [jsonl, "--source-field", "de", "--target-field", "en"]
    budget = ["--workers", "1", "--val-tokens", "3000"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli("shard", *args, "--tokenizer", tokenizer, "--out", ref, "--shard-size", "8KB",
               *budget) == 0
    real, calls = ShardWriter.checkpoint, []

    def stop_after_three(self, *a, **kw):
        real(self, *a, **kw)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "checkpoint", stop_after_three)
    cmd = ["shard", *args, "--tokenizer", tokenizer, "--out", out, "--shard-size", "8KB", *budget]
    assert cli(*cmd) == 130
    assert (out / ".resume" / "state.json").is_file() and not (out / "manifest.json").exists()
    monkeypatch.setattr(ShardWriter, "checkpoint", real)
    assert cli(*cmd) == 0
    assert read_tree(out) == read_tree(ref)


def test_tokenizer_learns_from_both_sides(tmp_path):
    """A word only in the source and one only in the target both become single tokens."""
    path = write_pairs(tmp_path / "p.jsonl",
                       [("zyxwvut " * 3 + f"q{i}", "mnbvcxq " * 3 + f"r{i}") for i in range(300)])
    assert cli("train-tokenizer", path, "--source-field", "de", "--target-field", "en",
               "--vocab-size", 300, "--out", tmp_path / "tok") == 0
    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert len(tok.encode("zyxwvut").ids) == 1 and len(tok.encode("mnbvcxq").ids) == 1


@pytest.mark.parametrize("argv, message", [
    (["--source-field", "de"], "--source-field and --target-field go together"),
    (["--source-file", "S"], "1 --source-file but 0 --target-file"),
    (["--source-file", "S", "--target-file", "SHORT"], "has 3 lines but"),
    (["LINES", "--source-field", "de", "--target-field", "en"], "pairs come from jsonl or parquet"),
    (["--source-file", "S", "--target-file", "S", "--text-field", "x"], "--text-field has no "
                                                                         "meaning for pairs"),
])
def test_bad_pair_options_are_one_clear_error(tmp_path, tokenizer, capsys, argv, message):
    (tmp_path / "S").write_text("a\nb\nc\n")
    (tmp_path / "SHORT").write_text("a\nb")
    (tmp_path / "l.txt").write_text("a\nb\n")
    files = {"S": tmp_path / "S", "SHORT": tmp_path / "SHORT", "LINES": tmp_path / "l.txt"}
    argv = [files.get(a, a) for a in argv]
    assert cli("shard", *argv, "--tokenizer", tokenizer, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_validate_and_inspect_understand_pairs(tmp_path, pair_data, capsys):
    assert cli("validate", pair_data) == 0
    assert cli("inspect", pair_data, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    train = report["splits"]["train"]
    assert report["kind"] == "pairs"
    assert train["source"]["tokens"] + train["target"]["tokens"] == train["tokens"]
    assert train["source"]["length_percentiles"]["p0"] >= 1
    ratio = train["target_source_ratio"]
    assert ratio["overall"] == round(train["target"]["tokens"] / train["source"]["tokens"], 4)
    assert ratio["p0"] <= ratio["p50"] <= ratio["p100"]
    assert cli("inspect", pair_data, "--decode", 1) == 0
    text = capsys.readouterr().out
    assert "train pair 0" in text and "\nsource: " in text and "\ntarget: " in text
    assert "target/source length ratio" in text


def test_validate_names_a_damaged_target_column(tmp_path, pair_data, capsys):
    """A target id >= vocab, with the manifest's checksums made consistent again."""
    import shutil

    from data_tools.manifest import sha256_file
    from data_tools.writer import write_lists
    d = tmp_path / "d"
    shutil.copytree(pair_data, d)
    m = read_manifest(d)
    entry = m.splits["train"].shards[0]
    vocab = m.tokenizer.vocab_size
    import numpy as np
    write_lists(d / entry.file, {"source": (np.array([0, 2]), np.array([5, 6])),
                                 "target": (np.array([0, 1]), np.array([vocab]))}, "uint16")
    obj = m.to_dict()
    obj["splits"]["train"]["shards"][0].update(sha256=sha256_file(d / entry.file),
                                                file_bytes=(d / entry.file).stat().st_size)
    (d / "manifest.json").write_text(json.dumps(obj))
    assert cli("validate", d) == 2
    err = capsys.readouterr().err
    assert f"target token id {vocab} >= vocab size {vocab}" in err and entry.file in err
    assert "1 pairs, manifest says" in err


def test_manifest_kind_is_backward_compatible(pair_data):
    obj = read_manifest(pair_data).to_dict()
    docs = json.loads(json.dumps(obj))
    docs.pop("kind")
    with pytest.raises(ManifestError, match="source_tokens.*belong to every split and shard of "
                                            "a pair folder"):
        Manifest.from_dict(docs, "m.json")
    for part in [docs["splits"][s] for s in docs["splits"]] + \
            [sh for s in docs["splits"] for sh in docs["splits"][s]["shards"]]:
        part.pop("source_tokens")
        part.pop("target_tokens")
    assert Manifest.from_dict(docs, "m.json").kind is None  # no key: a document folder
    docs["kind"] = "documents"
    m = Manifest.from_dict(docs, "m.json")
    assert not m.is_pairs and "kind" not in m.to_dict() and m.columns == ("tokens",)
    obj["splits"]["val"].pop("source_tokens")
    with pytest.raises(ManifestError, match=r"splits\.val: keys 'source_tokens'"):
        Manifest.from_dict(obj, "m.json")
