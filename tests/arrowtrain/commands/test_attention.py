"""arrowtrain attention: the explicit weights, recomputed from each layer's parameters and inputs,
reproduce the SDPA forward of every layer (encoder self, decoder self, cross; learned,
sinusoidal and RoPE positions; grouped-query heads; padding), rows sum to 1, masks hold, and the
npz / PNG files come out as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arrowtrain.commands.attention import capture, plot_grid
from pretrain.configlib import load_yaml, validate_section
from pretrain.model import ModelConfig, build_model

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"


@pytest.fixture(autouse=True)
def _keep_caplog(monkeypatch):
    """main() configures logging once per process, replacing the root logger's handlers (and
    caplog's with them) when it is the first to: keep it from doing so in these tests."""
    monkeypatch.setattr("pretrain.logs._CONFIGURED", True)


def model_of(name: str, **update):
    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    data.update(vocab_size=96, dropout=0.0, **update)
    torch.manual_seed(0)
    return build_model(validate_section(ModelConfig, data, source=name)).eval()


@pytest.mark.parametrize("name, update", [
    ("transformer-tiny", {}),                       # post-LN, sinusoidal
    ("t5-tiny", {"n_kv_heads": 2, "position": "rope"}),  # pre-RMSNorm, RoPE, grouped-query
    ("t5-tiny", {}),                                # T5 relative position bias (float mask)
])
def test_encdec_weights_reproduce_the_sdpa_forward(name, update):
    model = model_of(name, **update)
    S, T = 9, 7
    src = torch.randint(2, 96, (1, S))
    mask = torch.ones(1, S, dtype=torch.bool)
    mask[0, -3:] = False                            # padded keys get no weight
    weights, worst = capture(model, {"input_ids": src, "attention_mask": mask,
                                     "decoder_input_ids": torch.randint(2, 96, (1, T))})
    assert worst < 1e-5
    L = model.cfg.n_encoder_layers
    assert sorted(weights) == sorted([f"encoder.self.{i}" for i in range(L)]
                                     + [f"decoder.{k}.{i}" for k in ("self", "cross")
                                        for i in range(L)])
    h = model.cfg.n_heads
    for name, w in weights.items():
        queries = S if name.startswith("encoder") else T
        keys = T if name.startswith("decoder.self") else S
        assert w.shape == (h, queries, keys) and w.dtype == np.float32
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        if keys == S:
            assert (w[..., -3:] == 0).all()
        if name.startswith("decoder.self"):
            assert (np.triu(w, 1) == 0).all() and (np.diagonal(w, axis1=1, axis2=2) > 0).all()


def test_decoder_weights_reproduce_the_sdpa_forward():
    model = model_of("llama-tiny")                  # RoPE, grouped-query heads
    T = 11
    weights, worst = capture(model, {"input_ids": torch.randint(2, 96, (1, T))})
    assert worst < 1e-5
    assert sorted(weights) == [f"decoder.self.{i}" for i in range(model.cfg.n_layers)]
    for w in weights.values():
        assert w.shape == (model.cfg.n_heads, T, T)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        assert (np.triu(w, 1) == 0).all()


def test_a_wrong_explicit_weight_would_show(monkeypatch):
    """The check can fail: a softmax over the wrong axis gives a large difference."""
    import arrowtrain.commands.attention as att
    model = model_of("transformer-tiny")
    real = torch.softmax
    monkeypatch.setattr(att.torch, "softmax", lambda x, dim: real(x, dim=-2))
    _, worst = capture(model, {"input_ids": torch.randint(2, 96, (1, 6)),
                               "attention_mask": torch.ones(1, 6, dtype=torch.bool),
                               "decoder_input_ids": torch.randint(2, 96, (1, 5))})
    assert worst > 1e-2


def test_png_grid(tmp_path):
    w = np.random.default_rng(0).dirichlet(np.ones(5), size=(6, 4)).astype(np.float32)
    plot_grid(w, list("abcd"), list("vwxyz"), "a title", tmp_path / "x.png")
    from matplotlib.image import imread
    img = imread(tmp_path / "x.png")
    assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05


# ---- issue 19 item 3: a bad --out fails before the model runs; cut text says so -------------

def test_out_that_is_a_file_fails_before_loading_the_run(tmp_path, caplog):
    from arrowtrain.commands.attention import main

    (tmp_path / "maps").write_text("keep")
    assert main([str(tmp_path / "no-run"), "--text", "x", "--out", str(tmp_path / "maps")]) == 2
    assert f"--out {tmp_path / 'maps'} is a file; this command writes a folder" in caplog.text
    assert "no checkpoint" not in caplog.text and (tmp_path / "maps").read_text() == "keep"


def test_text_longer_than_the_model_says_it_was_cut(tmp_path, caplog):
    from arrowtrain.commands.attention import _inputs
    from data_tools.tokenizer import build_trainer

    tok, trainer = build_trainer(300, 0, 1)
    tok.train_from_iterator(["the cat sees the dog"] * 20, trainer)
    model = model_of("gpt-tiny", max_seq_len=8)
    inputs, labels = _inputs(model, tok, "the cat sees the dog " * 10, None, 0, 0, "cpu")
    assert inputs["input_ids"].shape[1] == 8 and len(labels["target"]) == 8
    assert "the maps show the first 8 tokens only (the rest was cut)" in caplog.text
