"""Validation split sizing: a tiny split is warned about, `--val-tokens N` picks the documents
with the smallest hashes until N tokens (exactly, in one pass, whatever --workers), and
`inspect` says how big the split is and how it was chosen."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from data_tools.folder import read_manifest
from data_tools.split import USEFUL_VAL_TOKENS, Doc, TokenBudgetSplit, doc_hash
from tests.data_tools.dt_util import cli, read_tree

BUDGET = 5000


def shard(corpus, tokenizer, out, *extra):
    workers = [] if "--workers" in extra else ["--workers", "1"]
    return cli("shard", corpus, "--tokenizer", tokenizer, "--out", out, "--shard-size", "64KB",
               *workers, *extra)


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, corpus, tokenizer):
    out = tmp_path_factory.mktemp("budget") / "data"
    assert shard(corpus, tokenizer, out, "--val-tokens", BUDGET) == 0
    return out


def expected_val(corpus, tokenizer) -> set[str]:
    """The split computed the slow, obvious way: sort all documents by (hash, position) and take
    them until BUDGET tokens."""
    tok = Tokenizer.from_file(str(tokenizer))
    tok.encode_special_tokens = True
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    order = sorted(range(len(texts)), key=lambda i: (doc_hash(texts[i].encode()), i))
    chosen, total = set(), 0
    for i in order:
        if total >= BUDGET:
            break
        chosen.add(texts[i])
        total += len(tok.encode(texts[i], add_special_tokens=False).ids)
    return chosen


def stored(out, split):
    import pyarrow as pa
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = []
    for _, s in read_manifest(out).shards(split):
        with pa.memory_map(str(out / s.file)) as src:
            for ids in pa.ipc.open_file(src).read_all().column("tokens").to_pylist():
                texts.append(tok.decode(ids, skip_special_tokens=False))
    return texts


def test_val_tokens_is_the_smallest_hash_prefix(budgeted, corpus, tokenizer):
    m = read_manifest(budgeted)
    val, train = m.splits["val"], m.splits["train"]
    assert set(stored(budgeted, "val")) == expected_val(corpus, tokenizer)
    assert val.tokens >= BUDGET               # met; minimal, as the set equality above shows
    assert m.args["val_tokens"] == BUDGET and m.args["val_fraction"] is None
    assert train.documents + val.documents == len(corpus.read_text().splitlines())


def test_val_tokens_independent_of_workers(tmp_path, budgeted, corpus, tokenizer):
    assert shard(corpus, tokenizer, tmp_path / "w2", "--val-tokens", BUDGET, "--workers", 2) == 0
    assert read_tree(tmp_path / "w2") == read_tree(budgeted)


def test_budget_split_in_any_order_holds_the_same_documents():
    rng = np.random.default_rng(0)
    docs = [Doc(int(rng.integers(0, 2**63)), (0, i), np.zeros(int(rng.integers(1, 50)), np.uint16),
                1) for i in range(400)]
    chosen = []
    for order in (docs, docs[::-1]):
        split, out = TokenBudgetSplit(1000), []
        for d in order:
            out += split.offer(d)
        val = split.finish()
        assert len(out) + len(val) == len(docs) and all(s == "train" for s, _ in out)
        chosen.append(sorted(d.pos for _, d in val))
        assert [d.pos for _, d in val] == sorted(d.pos for _, d in val)   # input order
    assert chosen[0] == chosen[1]
    by_hash = sorted(docs, key=lambda d: (d.hash, d.pos))
    need = np.searchsorted(np.cumsum([len(d.tokens) for d in by_hash]), 1000) + 1
    assert chosen[0] == sorted(d.pos for d in by_hash[:need])


def test_tiny_val_split_is_warned_and_inspect_says_so(tmp_path, corpus, tokenizer, caplog,
                                                     capsys):
    """The new user's mistake: --val-fraction 0.005 on a few hundred documents."""
    out = tmp_path / "o"
    assert shard(corpus, tokenizer, out, "--val-fraction", "0.005") == 0
    m = read_manifest(out)
    assert m.splits["val"].tokens < USEFUL_VAL_TOKENS
    assert "too few for a stable validation loss" in caplog.text and "--val-tokens" in caplog.text
    capsys.readouterr()
    assert cli("inspect", out) == 0
    report = capsys.readouterr().out
    assert f"val split: {m.splits['val'].tokens:,} tokens, chosen by --val-fraction 0.005" \
        in report and "too few" in report
    assert cli("inspect", out, "--json") == 0
    v = json.loads(capsys.readouterr().out)["val_split"]
    assert v["too_small"] is True and v["useful_min_tokens"] == USEFUL_VAL_TOKENS


def test_inspect_names_the_budget(budgeted, capsys):
    assert cli("inspect", budgeted) == 0
    assert f"chosen by --val-tokens {BUDGET:,}: the documents with the smallest hashes" in \
        capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--val-tokens", "100", "--val-fraction", "0.1"], "both given: pass one"),
    (["--val-tokens", "0"], "--val-tokens 0 must be >= 1"),
    (["--val-tokens", "100000000"], "put all"),
])
def test_bad_val_options_leave_nothing(tmp_path, corpus, tokenizer, extra, message, capsys):
    assert shard(corpus, tokenizer, tmp_path / "o", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def small_corpus(folder, files: int = 14, chars: int = 600):
    """A new user's corpus: a handful of files, each one document (INPUT:file)."""
    from tests.data_tools.dt_util import stdlib_texts
    folder.mkdir()
    for i, text in enumerate(stdlib_texts(files * chars * 2, chars)[:files]):
        (folder / f"note{i:02d}.txt").write_text(text)
    return folder


def test_a_small_corpus_keeps_one_document_in_val_and_says_so(tmp_path, tokenizer, caplog):
    """14 files at --val-fraction 0.005: no hash falls below it, so the split would be empty
    (exit 0, and the trainer refuses the folder later). `shard` keeps the smallest-hash
    document in val instead, says so, and its hint is the trainer's wording."""
    corpus = small_corpus(tmp_path / "c14")
    out = tmp_path / "o"
    assert cli("shard", f"{corpus}:file", "--tokenizer", tokenizer, "--out", out,
               "--workers", "1") == 0
    m = read_manifest(out)
    assert (m.splits["train"].documents, m.splits["val"].documents) == (13, 1)
    hashes = {doc_hash(p.read_bytes()): p.read_text() for p in corpus.iterdir()}
    assert stored(out, "val") == [hashes[min(hashes)]]  # the smallest hash: a function of bytes
    assert "--val-fraction 0.005 put none of the 14 documents in val: kept the one with the " \
           "smallest hash there" in caplog.text
    from data_tools.split import more_val_hint
    total = m.splits["train"].tokens + m.splits["val"].tokens
    assert more_val_hint(total // 10) in caplog.text
    # --val-fraction 0 asks for no val split, and gets none; so does a one-document corpus
    assert cli("shard", f"{corpus}:file", "--tokenizer", tokenizer, "--out", tmp_path / "z",
               "--workers", "1", "--val-fraction", "0") == 0
    assert read_manifest(tmp_path / "z").splits["val"].documents == 0
    one = small_corpus(tmp_path / "c1", files=1)
    assert cli("shard", f"{one}:file", "--tokenizer", tokenizer, "--out", tmp_path / "one",
               "--workers", "1") == 0
    assert read_manifest(tmp_path / "one").splits["train"].documents == 1


def test_kept_val_document_survives_a_resume(tmp_path, tokenizer, monkeypatch):
    """The held candidate is saved with each checkpoint: a run stopped before its end resumes
    to a folder byte-identical to an uninterrupted run's."""
    import data_tools.shard
    corpus = small_corpus(tmp_path / "c", files=40, chars=2000)
    args = [f"{corpus}:file", "--tokenizer", tokenizer, "--workers", "1", "--shard-size", "4KB",
            "--val-fraction", "0.0001"]
    assert cli("shard", *args, "--out", tmp_path / "whole") == 0
    assert read_manifest(tmp_path / "whole").splits["val"].documents == 1

    def stop(*_, **__):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(data_tools.shard, "finish", stop)
        assert cli("shard", *args, "--out", tmp_path / "cut") == 130
    assert any(p.name.startswith("pending-held") for p in (tmp_path / "cut" / ".resume").iterdir())
    assert cli("shard", *args, "--out", tmp_path / "cut") == 0
    assert read_tree(tmp_path / "cut") == read_tree(tmp_path / "whole")
