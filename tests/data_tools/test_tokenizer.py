"""train-tokenizer: determinism, special tokens and sentinels, --max-bytes, bad input; the EOS
and BOS of other models' tokenizers (Llama, Llama 3; --eos-token/--bos-token)."""

import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from data_tools.tokenizer import load_tokenizer, tokenizer_info
from tests.data_tools.dt_util import (
    REPO,
    SENTENCES,
    cli,
    cli_subprocess,
    llama3_tokenizer,
    llama_tokenizer,
    shard_rows,
    write_jsonl,
)


def test_special_tokens_and_sentinels_at_the_end(tokenizer):
    tok = Tokenizer.from_file(str(tokenizer))
    info = tokenizer_info(load_tokenizer(tokenizer), tokenizer)
    assert tok.get_vocab_size() == 512 == info.vocab_size
    assert (info.eos_id, info.pad_id, info.bos_id) == (0, 1, None)
    assert info.sentinel_ids == [508, 509, 510, 511]
    assert [tok.id_to_token(i) for i in info.sentinel_ids] == [f"<extra_id_{i}>" for i in range(4)]


def test_deterministic_for_same_inputs(tmp_path, corpus, tokenizer):
    """Retrained in another process on one thread: the same bytes as the fixture's tokenizer."""
    runs = tokenizer.parent / "runs.jsonl"
    r = cli_subprocess("train-tokenizer", corpus, runs, "--vocab-size", 512, "--sentinels", 4,
                       "--out", tmp_path, env={**os.environ, "RAYON_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tokenizer.json").read_bytes() == tokenizer.read_bytes()


def test_max_bytes_limits_the_sample(tmp_path, corpus, caplog):
    caplog.set_level("INFO")
    assert cli("train-tokenizer", corpus, "--vocab-size", 300, "--max-bytes", "20KB",
               "--out", tmp_path) == 0
    line = next(r.getMessage() for r in caplog.records if "trained" in r.getMessage())
    used_docs = int(line.split(" on ")[1].split()[0])
    total_docs = len(corpus.read_text().splitlines())
    assert 0 < used_docs < total_docs / 3, line


def test_errors_before_work(tmp_path, capsys):
    assert cli("train-tokenizer", tmp_path / "nope.jsonl", "--vocab-size", 300,
               "--out", tmp_path / "t") == 2
    assert "nope.jsonl' does not exist" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [""])
    assert cli("train-tokenizer", bad, "--vocab-size", 300, "--out", tmp_path / "t") == 2
    err = capsys.readouterr().err
    assert "no documents" in err and "empty 1" in err
    assert not (tmp_path / "t").exists()
    (tmp_path / "blank.txt").write_text("\n  \n\n")  # no record at all, so nothing skipped
    assert cli("train-tokenizer", tmp_path / "blank.txt", "--vocab-size", 300,
               "--out", tmp_path / "t") == 2
    err = capsys.readouterr().err
    assert "no documents in 1 input files (skipped: none)" in err and "skipped: )" not in err
    assert not (tmp_path / "t").exists()


def option_blocks(help_text: str) -> dict[str, str]:
    """'--name' -> its help text (the lines of one option in argparse's listing)."""
    blocks, name = {}, None
    for line in help_text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            name = line.split()[0].split(",")[-1].strip() if "," in line.split()[0] else \
                line.split()[0]
            blocks[name] = line
        elif name and line.startswith("    "):
            blocks[name] += " " + line.strip()
    return blocks


def test_help_on_every_command(capsys):
    r = cli_subprocess("--help")
    assert r.returncode == 0 and "train-tokenizer" in r.stdout, r.stderr
    for cmd in ("train-tokenizer", "shard", "validate", "inspect"):
        with pytest.raises(SystemExit) as e:
            cli(cmd, "--help")
        out = capsys.readouterr().out
        assert e.value.code == 0 and f"usage: python -m data_tools {cmd}" in out
        assert "(default: None)" not in out and "(default: False)" not in out
        assert "(default: [])" not in out
        for name, text in option_blocks(out).items():
            assert text.count("default") <= 1, f"{cmd} {name}: {text}"   # said once at most
    with pytest.raises(SystemExit):
        cli("shard", "--help")
    blocks = option_blocks(capsys.readouterr().out)
    assert "default" not in blocks["--tokenizer"] and "default" not in blocks["--out"]
    assert "(default: 256MB)" in blocks["--shard-size"]
    assert "default 0.005 unless --val-tokens" in blocks["--val-fraction"]


def test_data_tools_never_imports_torch_or_deepspeed():
    code = ("import sys, data_tools.__main__ as m; m.build_parser(); import data_tools.encode; "
            "print(sorted({'torch', 'deepspeed', 'pretrain'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_one_progress_bar_not_two(monkeypatch):
    """Issue 18 item 7: tokenizers' own bars drew over the "tokenizer text" bar on a terminal."""
    from data_tools.tokenizer import build_trainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _, trainer = build_trainer(vocab_size=300, sentinels=0, min_frequency=2)
    assert trainer.show_progress is False


# ---- tokenizers without <|endoftext|>: EOS and BOS from their own configuration ---------------

def shard_with(tok_file, out, corpus, *extra):
    return cli("shard", corpus, "--tokenizer", tok_file, "--out", out, "--workers", "1",
               "--val-fraction", "0.1", *extra)


@pytest.mark.parametrize("style, eos, bos, prepended", [
    ("llama", "</s>", "<s>", True),                                   # template "<s> $A"
    ("llama-config", "</s>", "<s>", False),                           # add_bos_token: false
    ("llama-config-dict", "</s>", "<s>", True),                       # AddedToken dicts
    ("llama3", "<|end_of_text|>", "<|begin_of_text|>", True),
])
def test_llama_style_tokenizers_shard_with_their_own_eos_and_bos(tmp_path, style, eos, bos,
                                                                 prepended, capsys):
    from data_tools.folder import read_manifest
    corpus = write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    if style == "llama3":
        tok_file = llama3_tokenizer(tmp_path / "tok")
    else:
        config = {"llama": None,
                  "llama-config": {"bos_token": "<s>", "eos_token": "</s>",
                                   "add_bos_token": False},
                  "llama-config-dict": {"bos_token": {"__type": "AddedToken", "content": "<s>"},
                                        "eos_token": {"__type": "AddedToken", "content": "</s>"},
                                        "add_bos_token": True}}[style]
        tok_file = llama_tokenizer(tmp_path / "tok", config)
    out = tmp_path / "o"
    assert shard_with(tok_file, out, corpus) == 0
    info, tok = read_manifest(out).tokenizer, Tokenizer.from_file(str(tok_file))
    assert (info.eos_id, info.bos_id) == (tok.token_to_id(eos), tok.token_to_id(bos))
    assert bool(info.bos_prepended) == prepended
    rows = shard_rows(out)
    assert len(rows) == len(SENTENCES)
    assert all((r[0] == info.bos_id) == prepended for r in rows)
    assert not any(info.eos_id in r for r in rows)  # EOS is never stored: the loader adds it
    if prepended:  # exactly what the tokenizer's own template gives (add_special_tokens)
        assert sorted(rows) == sorted(tok.encode(s).ids for s in SENTENCES)
    assert cli("validate", out) == 0  # it checks that every document starts with the BOS
    capsys.readouterr()
    assert cli("inspect", out) == 0
    start = f"each document starts with {bos} (id {info.bos_id})" if prepended else \
        "documents start with no BOS"
    assert f"end of document: {eos} (id {info.eos_id}, added by the loader); {start}" in \
        capsys.readouterr().out


def test_validate_checks_that_every_document_starts_with_the_bos(tmp_path, capsys):
    """A folder whose manifest says bos_prepended but whose documents start otherwise."""
    corpus = write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    tok_file = llama_tokenizer(tmp_path / "tok", {"bos_token": "<s>", "eos_token": "</s>",
                                                  "add_bos_token": False})
    out = tmp_path / "o"
    assert shard_with(tok_file, out, corpus) == 0
    m = json.loads((out / "manifest.json").read_text())
    m["tokenizer"]["bos_prepended"] = True  # not in the fingerprint: only validate can tell
    (out / "manifest.json").write_text(json.dumps(m))
    assert cli("validate", out) == 2
    err = capsys.readouterr().err
    assert f"documents do not start with bos_id {m['tokenizer']['bos_id']}" in err


def test_eos_bos_options_and_the_error_that_lists_the_special_tokens(tmp_path, capsys):
    from data_tools.folder import read_manifest
    corpus = write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    tok_file = llama_tokenizer(tmp_path / "tok", specials=("<unk>", "<cls>", "<sep>"),
                               template=None)
    assert shard_with(tok_file, tmp_path / "o", corpus) == 2
    err = capsys.readouterr().err
    assert f"tokenizer file {tok_file} has no end-of-document token" in err
    assert "its special tokens: <unk>, <cls>, <sep>" in err and "--eos-token" in err
    assert not (tmp_path / "o").exists()
    assert shard_with(tok_file, tmp_path / "o", corpus, "--eos-token", "<nope>") == 2
    assert "--eos-token '<nope>' is not a token of" in capsys.readouterr().err
    assert shard_with(tok_file, tmp_path / "o", corpus, "--eos-token", "<sep>",
                      "--bos-token", "<cls>") == 0
    m = read_manifest(tmp_path / "o")
    tok = Tokenizer.from_file(str(tok_file))
    assert (m.tokenizer.eos_id, m.tokenizer.bos_id) == (tok.token_to_id("<sep>"),
                                                        tok.token_to_id("<cls>"))
    assert m.tokenizer.bos_prepended and all(r[0] == m.tokenizer.bos_id
                                             for r in shard_rows(tmp_path / "o"))
    assert (m.args["eos_token"], m.args["bos_token"]) == ("<sep>", "<cls>")
    llama = llama_tokenizer(tmp_path / "llama")  # its template adds <s>; `none` says no
    assert shard_with(llama, tmp_path / "n", corpus, "--bos-token", "none") == 0
    info = read_manifest(tmp_path / "n").tokenizer
    assert info.bos_id is None and not info.bos_prepended
    assert not any(r[0] == tok.token_to_id("<s>") for r in shard_rows(tmp_path / "n"))


def test_export_and_translate_read_the_ids_a_folder_was_sharded_with(tmp_path):
    """tokenizer_info on a shard folder's tokenizer.json gives the manifest's ids (so a folder
    sharded with --eos-token keeps that EOS in export, translate and attention)."""
    corpus = write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    tok_file = llama_tokenizer(tmp_path / "tok")
    assert shard_with(tok_file, tmp_path / "o", corpus, "--eos-token", "<unk>") == 0
    copy = tmp_path / "o" / "tokenizer.json"
    info = tokenizer_info(load_tokenizer(copy), copy)
    assert info.eos_id == Tokenizer.from_file(str(tok_file)).token_to_id("<unk>")
