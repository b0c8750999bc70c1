"""Pre-flight: the config against the data folders, before any rank or DeepSpeed starts — every
problem in one error, the sample counts the loader will see, and `--print-config` giving exactly
the config a run writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.dist import REPO

from pretrain.configlib import COMMAND_LINE, ConfigError
from pretrain.data.span import span_lengths
from pretrain.objectives import open_data
from pretrain.train.config import load_run_config
from pretrain.train.preflight import check_run, read_folder, split_samples

GPT_TINY = REPO / "configs" / "gpt-tiny.yaml"
T5_TINY = REPO / "configs" / "t5-tiny.yaml"


def test_resolves_paths_against_the_working_directory_and_fills_the_vocabulary(
        tiny_data, tmp_path, monkeypatch):
    (tmp_path / "data").symlink_to(tiny_data)
    monkeypatch.chdir(tmp_path)
    cfg = check_run(GPT_TINY, ["run_dir=runs/x", "data.path=data", "model.vocab_size=null"],
                    world_size=2)
    assert cfg.run_dir == tmp_path / "runs" / "x" and cfg.data.path == str(tmp_path / "data")
    vocab = read_folder(tiny_data).vocab_size
    assert vocab < 512 and cfg.model.vocab_size == 512  # the tokenizer's, rounded up to 64
    assert not (tmp_path / "runs").exists()  # checking writes nothing
    assert cfg.data.shuffle_block_shards == 0          # auto resolved: local folders shuffle
    blocks = check_run(GPT_TINY, ["run_dir=runs/x", "data.path=data",   # globally
                                  "data.shuffle_block_shards=5"], world_size=2)
    assert blocks.data.shuffle_block_shards == 5


def test_every_data_problem_in_one_error_with_its_origin(tiny_data, tmp_path):
    other_tok = tmp_path / "other.json"
    other_tok.write_text('{"not": "the tokenizer"}')
    overrides = [f"data.path={tiny_data}", f"data.tokenizer={other_tok}", "model.vocab_size=100",
                 "train.global_batch_size=256", "train.micro_batch_size=128",
                 "eval.max_samples=null"]
    with pytest.raises(ConfigError) as err:
        check_run(GPT_TINY, overrides, world_size=2)
    problems = {p.text.split(" ")[0]: p for p in err.value.items}
    assert len(err.value.items) == 3, err.value
    tok = problems["data.tokenizer"]
    assert f"is not the tokenizer {tiny_data} was written with" in tok.text
    assert tok.origin == COMMAND_LINE and f"`data.tokenizer={other_tok}`" in tok.text
    vocab = read_folder(tiny_data).vocab_size
    assert "model.vocab_size (100) is smaller than the vocabulary of the tokenizer of " \
           f"{tiny_data} ({vocab})" in problems["model.vocab_size"].text
    val = problems["data.path:"].text
    assert "is less than one evaluation batch, micro_batch_size × ranks (128 × 2)" in val
    assert "eval.at_end=false" in val  # says what to change

    # turning evaluation off is one of the fixes it names
    assert check_run(GPT_TINY, [*overrides[:1], "train.global_batch_size=256",
                                "train.micro_batch_size=128", "eval.every_steps=0",
                                "eval.at_end=false"],
                     world_size=2).eval.at_end is False


def test_folders_that_are_not_shard_folders(tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    entries = ", ".join(f"{{path: {tmp_path / name}, weight: 1}}"
                        for name in ("empty", "file", "missing"))
    mix = f"data.path=[{entries}]"
    with pytest.raises(ConfigError) as err:
        check_run(GPT_TINY, [mix, "optim.lr=0"], world_size=1)
    text = str(err.value)
    assert "4 config problem(s)" in text
    assert f"{tmp_path / 'empty' / 'manifest.json'}: not found" in text
    assert f"data.path {tmp_path / 'file'}: a file, not a shard folder" in text
    assert f"data.path {tmp_path / 'missing'}: no such folder" in text
    assert "optim.lr: Input should be greater than 0" in text


def test_splits_too_short_and_missing_sentinels(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    val_tokens = read_folder(data).stream_tokens["val"]
    with pytest.raises(ConfigError, match=rf"the val split of {data} holds {val_tokens} tokens "
                       rf"\(EOS included\), fewer than one sample of {val_tokens + 1}"):
        check_run(GPT_TINY, [f"data.path={data}", f"data.seq_len={val_tokens}",
                             f"model.max_seq_len={val_tokens}"])
    spans = span_lengths(2400, 0.15, 3.0).num_spans
    assert spans > 100  # the tiny tokenizer has 100 sentinels
    with pytest.raises(ConfigError, match=f"needs {spans} sentinel ids, the tokenizer of {data} "
                       "has 100"):
        check_run(T5_TINY, [f"data.path={data}", "data.input_length=2400",
                            "model.max_seq_len=2400"])
    (data / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer.json is missing"):
        check_run(GPT_TINY, [f"data.path={data}"])


@pytest.mark.parametrize("config,lengths", [(GPT_TINY, ["data.seq_len=32"]),
                                            (T5_TINY, ["data.input_length=64"])])
def test_sample_counts_are_the_loaders(tiny_data, config, lengths):
    cfg = load_run_config(config, [f"data.path={tiny_data}", *lengths])
    src = open_data(cfg.data, cfg.seed)
    facts = read_folder(tiny_data)
    for split in ("train", "val"):
        assert split_samples(cfg.data, facts, split) == src.num_samples(split) > 0


def test_print_config_is_the_config_the_run_writes(straight_run, tiny_data, runs):
    """`pretrain.train --print-config` with a run's arguments prints its config.yaml, starts
    neither torch nor DeepSpeed and touches nothing in the run folder."""
    run_dir = straight_run(0)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    args = runs.small_run_args(run_dir, tiny_data, 0)[2:]  # without "-m pretrain.train"
    code = ("import sys; from pretrain.train.__main__ import main; rc = main(sys.argv[1:]); "
            "sys.stderr.write(str(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'deepspeed'}))); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args, "--print-config"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (run_dir / "config.yaml").read_text()
    assert proc.stderr.endswith("[]")  # no torch, no deepspeed
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    printed = Path(run_dir.parent / "printed.yaml")
    printed.write_text(proc.stdout)  # and it is a valid run config itself
    assert yaml.safe_load(proc.stdout)["model"]["vocab_size"] == 512
    assert load_run_config(printed, world_size=2).model.vocab_size == 512


def test_a_small_corpus_gets_one_fix_from_shard_and_from_the_trainer(tiny_data, tmp_path):
    """14 files: `shard` keeps a document in val and hints `--val-tokens N`; the trainer,
    needing one evaluation batch of val samples, names the same fix with the N it needs."""
    corpus = tmp_path / "c14"
    corpus.mkdir()
    for i in range(14):
        (corpus / f"note{i:02d}.md").write_text(f"note {i}: the small cat sees the old tree .\n")
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "data_tools", "shard", f"{corpus}:file",
                           "--tokenizer", str(tiny_data.parent / "tok" / "tokenizer.json"),
                           "--out", str(data), "--workers", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_folder(data).stream_tokens["val"] > 0
    fix = "re-shard with `arrowtrain data shard ... --val-tokens "
    assert fix in proc.stderr
    with pytest.raises(ConfigError) as err:  # gpt-tiny: seq_len 64, one eval batch = 2 × 2
        check_run(GPT_TINY, [f"data.path={data}"], world_size=2)
    text = str(err.value)
    assert f"{fix}{65 + 3 * 64}`" in text and "--val-fraction" not in text
