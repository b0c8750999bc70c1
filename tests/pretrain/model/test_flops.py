"""FLOPs per token (decoder: nanoGPT's 6N + 12·L·d·T; encoder-decoder: the documented sum) and MFU."""

import math

import pytest

from pretrain.model import ModelConfig, flops_per_token, mfu, peak_flops


def test_decoder_matches_nanogpt_reference():
    cfg = ModelConfig(family="decoder", vocab_size=50257, max_seq_len=1024, d_model=768,
                      n_heads=12, n_layers=12)
    n_without_positions = 124_439_808 - 1024 * 768
    assert flops_per_token(cfg, 1024) == 6 * n_without_positions + 12 * 12 * 768 * 1024
    assert flops_per_token(cfg, 512) == 6 * n_without_positions + 12 * 12 * 768 * 512


def test_untied_rope_decoder_counts_embedding_and_head():
    cfg = ModelConfig(family="decoder", vocab_size=1000, max_seq_len=64, d_model=64, n_heads=4,
                      n_kv_heads=2, d_ff=128, n_layers=2, norm="rmsnorm", position="rope",
                      activation="swiglu", bias=False, tie_embeddings=False)
    layer = 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64  # q+out, k+v (2 kv heads), ffn, norms
    n = 2 * 1000 * 64 + 2 * layer + 64
    assert flops_per_token(cfg, 64) == 6 * n + 12 * 2 * 64 * 64


def test_encoder_decoder_formula_for_the_2017_base_model():
    cfg = ModelConfig(family="encdec", vocab_size=37000, max_seq_len=512, d_model=512, n_heads=8,
                      d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, norm_position="post",
                      position="sinusoidal", activation="relu")
    d, f, V, S, T = 512, 2048, 37000, 128, 32
    attn, ffn, ln = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
    n_enc = 6 * (attn + ffn + 2 * ln)
    cross_kv = 6 * (2 * d * d + 2 * d)
    n_dec = 6 * (attn + (2 * d * d + 2 * d) + ffn + 3 * ln)  # without the cross K/V projections
    per_example = (S * (6 * n_enc + 12 * 6 * d * S) + S * 6 * cross_kv
                   + T * (6 * (n_dec + V * d) + 12 * 6 * d * (T + S)))
    assert flops_per_token(cfg, S, target_len=T) == round(per_example / S)


def test_mfu_and_peak_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA GeForce GTX 1080") is None
    # the H200 anchor in shared/notes/gpu.md: 505K tok/s on GPT-2 124M at T=1024 -> 43.7%
    fpt = 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert mfu(505e3, fpt, 1, peak=989e12) == pytest.approx(0.4366, abs=5e-4)
    assert mfu(2 * 505e3, fpt, 2, peak=989e12) == pytest.approx(mfu(505e3, fpt, 1, peak=989e12))


def test_mfu_on_cpu_is_nan_not_a_made_up_number():
    if peak_flops() is not None:
        pytest.skip("a known GPU is present")
    assert math.isnan(mfu(1000.0, 10**9, 1))


def _meta_count(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def _flops_from_the_built_model(cfg: ModelConfig, S: int, T: int) -> int:
    """The counts taken from the model built on the meta device (what flops_per_token did before
    it read pretrain.model.shapes): the torch-free counter must give the same number."""
    import torch

    from pretrain.model import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    d = cfg.d_model
    if cfg.family == "decoder":
        skip = {id(p) for p in model.positions.parameters()}
        n = _meta_count(p for p in model.parameters() if id(p) not in skip)
        return 6 * n + 12 * cfg.n_layers * d * S
    n_enc = _meta_count([*model.encoder.parameters(), *model.enc_norm.parameters()])
    xkv = [p for b in model.decoder.blocks for p in b.cross_attn.kv_proj.parameters()]
    skip = {id(p) for p in xkv}
    n_dec = _meta_count(p for p in [*model.decoder.parameters(), *model.dec_norm.parameters()]
                        if id(p) not in skip)
    per_example = (S * (6 * n_enc + 12 * cfg.n_encoder_layers * d * S) + S * 6 * _meta_count(xkv)
                   + T * (6 * (n_dec + model.lm_head.weight.numel())
                          + 12 * cfg.n_decoder_layers * d * (T + S)))
    return round(per_example / S)


@pytest.mark.parametrize("update", [{}, {"tie_embeddings": False}, {"norm_position": "post"},
                                    {"activation": "geglu"}, {"position": "sinusoidal"}],
                         ids=lambda u: ",".join(f"{k}={v}" for k, v in u.items()) or "shipped")
@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "t5-tiny", "transformer-tiny"])
def test_torch_free_count_equals_the_built_model(name, update, tiny_cfg):
    cfg = tiny_cfg(name, **update)
    assert flops_per_token(cfg, 32, 16) == _flops_from_the_built_model(cfg, 32, 16)


def test_counter_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from pretrain.model import ModelConfig, flops_per_token; "
            "flops_per_token(ModelConfig(family='decoder', vocab_size=64, max_seq_len=8, "
            "d_model=8, n_heads=2, n_layers=1), 8); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
