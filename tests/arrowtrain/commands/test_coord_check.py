"""arrowtrain coord-check: the proof that muP holds in this code. Widths 64-512 of the tiny
GPT, trained 3 steps on the tiny corpus at the config's lr: under muP every recorded layer's
mean |activation| stays within a factor 2 across widths after step 1; under standard
parametrization the blocks and logits grow with width. The CSV, the PNGs, the verdict table;
widths the heads cannot divide and encoder-decoders are refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers.dist import REPO

from arrowtrain.commands.coord_check import main, run
from pretrain.train.coord import verdicts

CONFIG = str(REPO / "configs" / "gpt-tiny.yaml")


@pytest.fixture
def data(tiny_data) -> Path:
    return tiny_data  # tests/conftest.py's, built once per session


def overrides(data: Path) -> list[str]:
    return [f"data.path={data}", "data.seq_len=32", "train.micro_batch_size=8"]


def test_mup_is_flat_across_widths_and_standard_grows(data, tmp_path, capsys):
    out = tmp_path / "cc"
    code = main(["--config", CONFIG, "--widths", "64,128,256,512", "--steps", "3", "--out",
                 str(out), *overrides(data)])
    assert code == 0
    with (out / "coord_check.csv").open() as f:
        rows = [{**r, "width": int(r["width"]), "step": int(r["step"]),
                 "mean_abs": float(r["mean_abs"])} for r in csv.DictReader(f)]
    layers = ["embedding", "block0.attn", "block0.ffn", "block0.out", "block1.attn",
              "block1.ffn", "block1.out", "logits"]
    assert len(rows) == 2 * 4 * 3 * len(layers)
    assert list(rows[0]) == ["parametrization", "width", "step", "layer", "mean_abs"]
    found = {(v.parametrization, v.layer): v for v in verdicts(rows)}
    for layer in layers:
        mup = found["mup", layer]
        assert mup.max_over_min <= 2.0 and mup.verdict == "flat", mup
        if layer != "embedding":  # the embedding does not depend on width at all
            std = found["standard", layer]
            assert std.max_over_min > 3.0 and std.slope > 0.3, std
            assert std.verdict == "grows with width"
    for p in ("standard", "mup"):
        assert (out / f"coord_check_{p}.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "block0.ffn" in table and "grows with width" in table and "flat" in table


def test_widths_the_heads_cannot_divide_and_encdec_are_refused(data, tmp_path, capsys):
    args = ["--config", CONFIG, "--out", str(tmp_path), *overrides(data)]
    assert main([*args, "--widths", "64,72"]) == 2
    assert "width 72: not a multiple of head_dim" in capsys.readouterr().err
    from pretrain.configlib import load_yaml
    from pretrain.train.config import build_run_config

    t5 = load_yaml(REPO / "configs" / "t5-tiny.yaml")
    t5["model"]["vocab_size"] = 512
    assert run(build_run_config(t5), [64, 128], 2, tmp_path) == 2
    assert "model.family=encdec" in capsys.readouterr().err  # refused before any data is read
    with pytest.raises(SystemExit):
        main([*args, "--widths", "64"])
    assert "at least two different widths" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv"))
