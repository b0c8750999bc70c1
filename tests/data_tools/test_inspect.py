"""inspect: statistics per split agree with the manifest and the shards; --decode shows text."""

import json

from tokenizers import Tokenizer

from data_tools.folder import read_manifest
from tests.data_tools.dt_util import TRICKY, cli, cli_subprocess, write_jsonl


def test_inspect_json_and_decode(tmp_path, tokenizer, capsys):
    docs = ["first document\nwith two lines", "second", TRICKY[2]] + ["filler text " * 40] * 20
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "o"
    assert cli("shard", corpus, "--tokenizer", tokenizer, "--out", out, "--workers", "1",
               "--val-fraction", "0") == 0
    capsys.readouterr()
    assert cli("inspect", out, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    m = read_manifest(out)
    train = report["splits"]["train"]
    assert train["documents"] == 23 == m.splits["train"].documents
    assert train["tokens"] == m.splits["train"].tokens
    assert train["bytes_per_token"] == round(train["text_bytes"] / train["tokens"], 4)
    p = train["length_percentiles"]
    shortest = len(Tokenizer.from_file(str(tokenizer)).encode("second").ids)
    assert p["p0"] == shortest and p["p0"] <= p["p50"] <= p["p100"]
    assert sum(train["length_histogram"].values()) == 23
    assert report["splits"]["val"]["documents"] == 0
    r = cli_subprocess("inspect", out, "--decode", 3)
    assert r.returncode == 0, r.stderr
    assert "first document\nwith two lines" in r.stdout and TRICKY[2] in r.stdout
    assert "--- train document 2" in r.stdout and "tokens per document" in r.stdout
