"""train-tokenizer: determinism, special tokens and sentinels, --max-bytes, bad input."""

import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from data_tools.tokenizer import load_tokenizer, tokenizer_info
from tests.data_tools.dt_util import REPO, cli, cli_subprocess, write_jsonl


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
