"""seq2seq through the real trainer: translate-tiny on 2 gloo ranks over a pair folder made by
the data_tools CLI — padding fraction in the metrics, the skipped-pairs report, and a stop then
resume that continues bit for bit; pre-flight checks of objective against folder kind."""

from __future__ import annotations

import pytest
from helpers.dist import REPO, run_ranks

from pretrain.configlib import ConfigError
from pretrain.train.preflight import check_run, read_folder, split_samples

SMALL = ("train.max_steps=6", "train.global_batch_size=16", "train.micro_batch_size=4",
         "checkpoint.every_steps=100", "eval.every_steps=3", "eval.max_samples=32",
         "logging.wandb.mode=disabled", "data.input_length=9", "schedule.warmup_steps=3")


@pytest.fixture(scope="module")
def straight(pair_data, tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("s2s")
    ranks = run_ranks(runs.train_args("translate-tiny.yaml", root / "run", pair_data, *SMALL),
                      root / "logs")
    return root / "run", ranks.logs()


def test_metrics_report_padding_and_skipped_pairs(straight, pair_data, runs):
    run_dir, logs = straight
    rows = runs.read_metrics(run_dir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= r["padding_fraction"] < 0.5 for r in steps)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 6] and val[-1]["val_loss"] < val[0]["val_loss"]
    # input_length 9 (EOS included) leaves out the sources of 9 or more tokens
    assert "seq2seq: train " in logs and " skipped; longer pairs are skipped " \
           "(data.input_length 9, data.target_length 32, EOS included)" in logs
    skipped = int(logs.split("pairs used, ")[1].split(" skipped")[0].replace(",", ""))
    assert skipped > 0


def test_stop_then_resume_continues_exactly(straight, pair_data, tmp_path, runs):
    run_dir, _ = straight
    args = runs.train_args("translate-tiny.yaml", tmp_path / "run", pair_data, *SMALL)
    run_ranks([*args, "train.stop_at_step=4"], tmp_path / "logs1", expect=75)
    run_ranks(args, tmp_path / "logs2")
    assert runs.train_losses(tmp_path / "run") == runs.train_losses(run_dir)


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
    with pytest.raises(ConfigError, match="data.objective seq2seq needs model.family encdec"):
        check_run(REPO / "configs" / "gpt-tiny.yaml",
                  [f"data.path={pair_data}", "data.objective=seq2seq", "data.input_length=16",
                   "data.target_length=16"])
