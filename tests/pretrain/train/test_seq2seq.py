"""seq2seq through the real trainer: translate-tiny on 2 gloo ranks over a pair folder made by
the data_tools CLI — padding fraction and val_bleu in metrics.jsonl and W&B (offline, read
back), the skipped-pairs report, and a stop then resume that continues bit for bit; pre-flight
checks of objective against folder kind; arrowtrain attention / translate on a decoder
run."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.dist import REPO, run_python, run_ranks

from pretrain.configlib import ConfigError
from pretrain.train.preflight import check_run, read_folder, split_samples

SMALL = ("train.max_steps=6", "train.global_batch_size=16", "train.micro_batch_size=4",
         "checkpoint.every_steps=100", "eval.every_steps=3", "eval.max_samples=32",
         "data.input_length=9", "schedule.warmup_steps=3", "eval.bleu_samples=16",
         # ZeRO-3: parameters gathered in every forward, so val_bleu's ranks decode in step
         "deepspeed.zero_stage=3", "eval.bleu_beam=2")


@pytest.fixture(scope="module")
def straight(pair_data, tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("s2s")
    ranks = run_ranks(runs.train_args("translate-tiny.yaml", root / "run", pair_data, *SMALL,
                                      "logging.wandb.mode=offline"), root / "logs")
    return root / "run", ranks.logs()


def test_metrics_report_padding_and_skipped_pairs(straight, pair_data, runs):
    run_dir, logs = straight
    rows = runs.read_metrics(run_dir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= r["padding_fraction"] < 0.5 for r in steps)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 6] and val[-1]["val_loss"] < val[0]["val_loss"]
    assert all(0.0 <= r["val_bleu"] <= 100.0 for r in val)
    # input_length 9 (EOS included) leaves out the sources of 9 or more tokens
    assert "seq2seq: train " in logs and " skipped; longer pairs are skipped " \
           "(data.input_length 9, data.target_length 32, EOS included)" in logs
    skipped = int(logs.split("pairs used, ")[1].split(" skipped")[0].replace(",", ""))
    assert skipped > 0


def test_wandb_gets_val_bleu_and_padding(straight):
    from tests.pretrain.train.test_resume import wandb_records
    run_dir, _ = straight
    items = [r["history"]["item"] for r in wandb_records(run_dir) if r["type"] == "history"]
    assert [i["train/step"] for i in items if "val_bleu" in i] == [3, 6]
    assert len([i for i in items if "padding_fraction" in i]) == 6


def test_stop_then_resume_continues_exactly(straight, pair_data, tmp_path, runs):
    run_dir, _ = straight
    args = runs.train_args("translate-tiny.yaml", tmp_path / "run", pair_data, *SMALL,
                           "logging.wandb.mode=disabled")
    run_ranks([*args, "train.stop_at_step=4"], tmp_path / "logs1", expect=75)
    run_ranks(args, tmp_path / "logs2")
    assert runs.train_losses(tmp_path / "run") == runs.train_losses(run_dir)


def test_translate_prints_one_line_per_input_line_and_nothing_else(straight, tmp_path):
    """`arrowtrain translate RUN --input F > out.txt`: out.txt holds exactly one translation per
    input line (DeepSpeed's accelerator warning once made it 301 lines for 300)."""
    from tests.pretrain.train.test_stdout import to_file

    run_dir, _ = straight
    source = tmp_path / "source.txt"
    source.write_text("".join(f"{a} {b}\n" for a in ("the", "cat", "a") for b in ("dog", "sees")))
    text, _ = to_file(tmp_path, "translate", str(run_dir), "--input", str(source), "--beam",
                        "1", "--max-len", "8")
    assert text.count("\n") == 6 and len(text.split("\n")) == 7 and "WARNING" not in text


def test_preflight_matches_objective_and_folder_kind(pair_data, tiny_data):
    cfg = check_run(REPO / "configs" / "translate-tiny.yaml", [f"data.path={pair_data}"],
                    world_size=2)
    facts = read_folder(pair_data)
    assert facts.pairs and split_samples(cfg.data, facts, "val") == facts.rows["val"] > 0
    with pytest.raises(ConfigError, match="is a document folder: data.objective seq2seq needs "
                                          "a pair folder"):
        check_run(REPO / "configs" / "translate-tiny.yaml", [f"data.path={tiny_data}"])
    with pytest.raises(ConfigError, match="is a pair folder .source -> target.: data.objective "
                                          "clm needs documents"):
        check_run(REPO / "configs" / "gpt-tiny.yaml", [f"data.path={pair_data}"])
    with pytest.raises(ConfigError, match=r"eval.bleu_samples \(8\) is less than one evaluation "
                                          r"batch, micro_batch_size × ranks \(32 × 2\)"):
        check_run(REPO / "configs" / "translate-tiny.yaml", [f"data.path={pair_data}",
                                                             "eval.bleu_samples=8"], world_size=2)
    assert check_run(REPO / "configs" / "translate-tiny.yaml",
                     [f"data.path={pair_data}", "eval.bleu_samples=0"], world_size=2)
    with pytest.raises(ConfigError, match="data.objective seq2seq needs model.family encdec"):
        check_run(REPO / "configs" / "gpt-tiny.yaml",
                  [f"data.path={pair_data}", "data.objective=seq2seq", "data.input_length=16",
                   "data.target_length=16"])


def test_attention_maps_of_a_decoder_run_and_translate_refuses_it(straight_run, tmp_path, cli):
    from arrowtrain.commands.attention import main

    run = straight_run(0)
    res = cli(main, run, "--text", "the red cat sees the dog", "--out", tmp_path / "att")
    assert res.code == 0, res.err
    maps = np.load(tmp_path / "att" / "attention.npz")
    layers = sorted(k for k in maps.files if not k.startswith("tokens."))
    assert layers == ["decoder.self.0", "decoder.self.1"] and "tokens.target" in maps.files
    w = maps["decoder.self.1"]
    assert np.allclose(w.sum(-1), 1.0, atol=1e-5) and (np.triu(w, 1) == 0).all()
    assert sorted(p.name for p in (tmp_path / "att").glob("*.png")) == \
        ["decoder.self.0.png", "decoder.self.1.png"]
    # translate as a real subprocess: its exit code, one line, no traceback
    proc = run_python(["-m", "arrowtrain.commands.translate", str(run)], input="a b\n",
                      timeout=300)
    assert proc.returncode == 2 and "needs an encoder-decoder run" in proc.stderr
    assert "Traceback" not in proc.stderr
