"""Encoder-decoder models (2017 Transformer and T5-like): causal decoder, bidirectional encoder,
padding invariance."""

import pytest
import torch

from pretrain.model import build_model

STYLES = ["transformer-tiny", "t5-tiny"]


def _batch(B=2, S=10, T=8, vocab=96):
    return {"input_ids": torch.randint(2, vocab, (B, S)),
            "attention_mask": torch.ones(B, S, dtype=torch.bool),
            "decoder_input_ids": torch.randint(2, vocab, (B, T))}


@pytest.mark.parametrize("name", STYLES)
def test_decoder_side_is_causal(tiny_cfg, name):
    model = build_model(tiny_cfg(name)).eval()
    batch = _batch()
    t = 4
    changed = dict(batch, decoder_input_ids=batch["decoder_input_ids"].clone())
    changed["decoder_input_ids"][:, t] = (batch["decoder_input_ids"][:, t] + 1) % 96
    before, after = model(**batch)["logits"], model(**changed)["logits"]  # (B, T, V)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 1e-6


@pytest.mark.parametrize("name", STYLES)
def test_encoder_is_bidirectional(tiny_cfg, name):
    """Changing the last source token changes the encoder output at the first position."""
    model = build_model(tiny_cfg(name)).eval()
    batch = _batch()
    changed = batch["input_ids"].clone()
    changed[:, -1] = (changed[:, -1] + 1) % 96
    before = model.encode(batch["input_ids"], batch["attention_mask"])  # (B, S, C)
    after = model.encode(changed, batch["attention_mask"])
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-5


@pytest.mark.parametrize("name", STYLES)
def test_padding_never_changes_unpadded_outputs(tiny_cfg, name):
    model = build_model(tiny_cfg(name)).eval()
    batch = _batch(B=1, S=9, T=6)
    targets = torch.randint(2, 96, (1, 6))
    ref = model(**batch, targets=targets)
    pad_id = 1
    padded = {  # 5 padding tokens on the source, 3 on the target side
        "input_ids": torch.cat([batch["input_ids"], torch.full((1, 5), pad_id)], dim=1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(1, 5, dtype=torch.bool)], 1),
        "decoder_input_ids": torch.cat([batch["decoder_input_ids"], torch.full((1, 3), pad_id)], 1),
    }
    out = model(**padded, targets=torch.cat([targets, torch.full((1, 3), -100)], dim=1))
    torch.testing.assert_close(out["logits"][:, :6], ref["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
    # the control: the same padding without the mask is visible
    unmasked = model(padded["input_ids"], padded["decoder_input_ids"])["logits"][:, :6]
    assert not torch.allclose(unmasked, ref["logits"], atol=1e-4)


def test_label_smoothing_from_config(tiny_cfg):
    model = build_model(tiny_cfg("transformer-tiny")).eval()
    assert model.cfg.label_smoothing == 0.1
    batch, targets = _batch(), torch.randint(2, 96, (2, 8))
    out = model(**batch, targets=targets)
    want = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 96), targets.flatten(),
                                             label_smoothing=0.1)
    torch.testing.assert_close(out["loss"], want)


def test_source_and_target_share_the_tied_embedding(tiny_cfg):
    model = build_model(tiny_cfg("t5-tiny"))
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("name", ["llama-tiny", "gpt-tiny", *STYLES])
def test_a_bf16_cast_model_matches_fp32(tiny_cfg, name):
    """DeepSpeed's bf16 mode casts the whole module; RoPE angles stay float32 inside."""
    cfg = tiny_cfg(name, dropout=0.0, label_smoothing=0.0)
    model = build_model(cfg).eval()
    batch = _batch()
    if cfg.family == "decoder":
        batch = {"input_ids": batch["input_ids"]}
    targets = torch.randint(2, 96, batch.get("decoder_input_ids", batch["input_ids"]).shape)
    ref = model(**batch, targets=targets)["loss"]
    low = model.to(torch.bfloat16)(**batch, targets=targets)
    assert low["logits"].dtype == torch.bfloat16
    assert low["loss"].item() == pytest.approx(ref.item(), rel=2e-2)


@pytest.mark.parametrize("name", STYLES)
def test_bf16_parameters_with_fp32_buffers_run(tiny_cfg, name):
    """DeepSpeed's bf16 mode casts the parameters only; buffers (the sinusoidal table) stay
    fp32 and must not promote the activations back to fp32 (a dtype error in the next matmul)."""
    cfg = tiny_cfg(name, dropout=0.0, label_smoothing=0.0)
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    assert any(b.dtype == torch.float32 for b in model.buffers()) or cfg.position != "sinusoidal"
    out = model(**_batch(), targets=torch.randint(2, 96, (2, 8)))
    assert out["logits"].dtype == torch.bfloat16 and torch.isfinite(out["loss"])
