"""shard: round trip, independence from --workers, refusing other arguments, long documents."""

import json
import resource

import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from data_tools.folder import read_manifest
from data_tools.manifest import fingerprint, sha256_file
from tests.data_tools.dt_util import TRICKY, cli, cli_subprocess, read_tree, stdlib_texts


def shard(corpus, tokenizer, out, *extra):
    workers = [] if "--workers" in extra else ["--workers", "1"]
    return cli("shard", corpus, "--tokenizer", tokenizer, "--out", out, "--shard-size", "64KB",
               "--val-fraction", "0.1", *workers, *extra)


def stored_docs(out):
    """All stored documents as lists of ids, in split/shard/row order."""
    m = read_manifest(out)
    docs = []
    for info in m.splits.values():
        for s in info.shards:
            with pa.memory_map(str(out / s.file)) as src:
                docs += pa.ipc.open_file(src).read_all().column("tokens").to_pylist()
    return docs


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, corpus, tokenizer):
    out = tmp_path_factory.mktemp("sharded") / "data"
    assert shard(corpus, tokenizer, out, "--workers", "1") == 0
    return out


def test_round_trip_every_document(sharded, corpus):
    tok = Tokenizer.from_file(str(sharded / "tokenizer.json"))
    decoded = sorted(tok.decode(ids, skip_special_tokens=False) for ids in stored_docs(sharded))
    originals = sorted(json.loads(line)["text"] for line in corpus.read_text().splitlines())
    assert decoded == originals
    assert any("<|endoftext|>" in t for t in decoded)  # literal stays text, never the eos id
    eos = read_manifest(sharded).tokenizer.eos_id
    assert all(eos not in ids for ids in stored_docs(sharded))


def test_manifest_matches_files(sharded):
    m = read_manifest(sharded)
    assert m.dtype == "uint16" and m.skipped == {}
    assert m.fingerprint == fingerprint(m)
    assert sha256_file(sharded / "tokenizer.json") == m.tokenizer.sha256
    assert len(m.splits["train"].shards) > 3 and m.splits["val"].documents > 0
    for info in m.splits.values():
        assert info.documents == sum(s.documents for s in info.shards)
        for s in info.shards:
            assert (sharded / s.file).stat().st_size == s.file_bytes
            assert sha256_file(sharded / s.file) == s.sha256
    assert "workers" not in m.args and "overwrite" not in m.args
    assert not (sharded / ".resume").exists()


def test_workers_do_not_change_a_byte(tmp_path, sharded, corpus, tokenizer):
    assert shard(corpus, tokenizer, tmp_path / "w2", "--workers", "2") == 0
    assert read_tree(tmp_path / "w2") == read_tree(sharded)


def test_split_is_a_function_of_the_document(tmp_path, corpus, tokenizer, sharded):
    """The same texts in reverse order land in the same splits."""
    lines = corpus.read_text().splitlines()
    (tmp_path / "rev.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    assert shard(tmp_path / "rev.jsonl", tokenizer, tmp_path / "rev") == 0
    a, b = read_manifest(sharded).splits, read_manifest(tmp_path / "rev").splits
    assert [a[s].tokens for s in a] == [b[s].tokens for s in b]


def test_existing_folder_rules(tmp_path, sharded, corpus, tokenizer, capsys):
    out = tmp_path / "data"
    assert shard(corpus, tokenizer, out) == 0
    before = read_tree(out)
    assert shard(corpus, tokenizer, out) == 0  # same command again: nothing to do
    assert "nothing to do" in capsys.readouterr().err or read_tree(out) == before
    assert shard(corpus, tokenizer, out, "--max-doc-bytes", "1MB") == 2
    err = capsys.readouterr().err
    assert "other arguments" in err and "--max-doc-bytes" in err and "--overwrite" in err
    assert read_tree(out) == before
    assert shard(corpus, tokenizer, out, "--max-doc-bytes", "1MB", "--overwrite") == 0
    assert read_manifest(out).args["max_doc_bytes"] == 1 << 20
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    assert shard(corpus, tokenizer, tmp_path / "other") == 2
    assert "not a shard folder" in capsys.readouterr().err
    (out / "manifest.json").write_text("{broken")
    assert shard(corpus, tokenizer, out) == 2
    assert "invalid JSON" in capsys.readouterr().err
    assert shard(corpus, tokenizer, out, "--overwrite") == 0 and read_tree(out) == before


def test_inputs_mixed_formats(tmp_path, tokenizer):
    """txt, jsonl.gz, jsonl.zst, parquet and --format file from files, folders and globs."""
    import gzip

    import pyarrow.parquet as pq
    import zstandard
    texts = stdlib_texts(40_000)[:6]
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(texts[0].replace("\n", " ") + "\n\n" + TRICKY[2] + "\n")
    with gzip.open(d / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": texts[1]}) + "\n")
    (d / "sub" / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json.dumps({"text": texts[2]}).encode() + b"\n"))
    pq.write_table(pa.table({"text": [texts[3], texts[4]]}), d / "sub" / "d.parquet")
    assert cli("shard", d / "a.txt", str(d / "*.gz"), d / "sub", "--tokenizer", tokenizer,
               "--out", tmp_path / "o", "--val-fraction", "0", "--workers", "1") == 0
    tok = Tokenizer.from_file(str(tokenizer))
    got = [tok.decode(ids) for ids in stored_docs(tmp_path / "o")]
    assert got == [texts[0].replace("\n", " "), TRICKY[2], texts[1], texts[2], texts[3], texts[4]]
    (d / "e.py").write_text(texts[5])
    assert cli("shard", d / "e.py", "--format", "file", "--tokenizer", tokenizer,
               "--out", tmp_path / "f", "--val-fraction", "0", "--workers", "1") == 0
    assert [tok.decode(ids) for ids in stored_docs(tmp_path / "f")] == [texts[5]]


def test_50mb_single_document(tmp_path, tokenizer):
    """Stored whole, decoded back exactly, in bounded memory (pieces are encoded separately)."""
    head = "def f(x):\n    return x + 1\n"
    text = head + ("x" * 255 + "\n") * ((50 << 20) // 256) + "# the end\n"
    (tmp_path / "big.txt").write_text(text)
    r = cli_subprocess("shard", tmp_path / "big.txt", "--format", "file", "--tokenizer",
                       tokenizer, "--out", tmp_path / "o", "--workers", "1")
    assert r.returncode == 0, r.stderr
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert peak_gb < 2.0, f"peak RSS {peak_gb:.2f} GB"
    (ids,) = stored_docs(tmp_path / "o")
    assert Tokenizer.from_file(str(tokenizer)).decode(ids) == text


def test_vocab_over_65535_uses_uint32(tmp_path, tokenizer):
    tok = Tokenizer.from_file(str(tokenizer))
    tok.add_tokens([f"w{i:05d}" for i in range(66_000)])
    tok.save(str(tmp_path / "big.json"))
    (tmp_path / "c.txt").write_text("a w65999 b w00000 c\n")
    assert cli("shard", tmp_path / "c.txt", "--tokenizer", tmp_path / "big.json", "--out",
               tmp_path / "o", "--workers", "1", "--val-fraction", "0") == 0
    m = read_manifest(tmp_path / "o")
    assert m.dtype == "uint32" and m.tokenizer.vocab_size == 66_512
    (ids,) = stored_docs(tmp_path / "o")
    assert max(ids) > 65535 and tok.decode(ids) == "a w65999 b w00000 c"
    assert cli("validate", tmp_path / "o") == 0


def test_shard_never_imports_pandas(tmp_path, corpus, tokenizer):
    """pyarrow's pa.array imports pandas when it is installed: 1-2 s of serial time in the
    single writer (measured by benchmarks/shard_throughput.py --profile). The writer builds
    its arrays from buffers instead; a whole shard run (with a resume checkpoint) stays
    pandas-free."""
    import subprocess
    import sys

    from tests.data_tools.dt_util import REPO

    code = ("import sys; from data_tools.__main__ import main; "
            f"rc = main(['shard', {str(corpus)!r}, '--tokenizer', {str(tokenizer)!r}, "
            f"'--out', {str(tmp_path / 'o')!r}, '--shard-size', '64KB', '--workers', '1']); "
            "print(rc, 'pandas' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.split() == ["0", "False"], r.stdout + r.stderr
    assert len(read_manifest(tmp_path / "o").splits["train"].shards) > 1  # checkpoints ran
