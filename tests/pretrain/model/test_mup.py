"""muP in the decoders (pretrain/model/mup.py): at d_model == mup_base_width the model is the
standard one bit for bit (weights, logits, a training step); wider, the hidden matrices start at
σ/√m, the logits are ×1/m (tied or not), attention is √(base head dim)/head_dim; the param
groups; the config refuses what muP cannot apply to, naming the keys."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.configlib import ConfigError, validate_section
from pretrain.model import ModelConfig, build_model
from pretrain.model.mup import attention_scale, group_specs, output_scale, width_mult
from pretrain.train.engine import param_groups


def seeded(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
def test_at_the_base_width_mup_is_standard_bit_for_bit(name, tiny_cfg):
    std = tiny_cfg(name, dropout=0.0)
    mup = tiny_cfg(name, dropout=0.0, parametrization="mup", mup_base_width=std.d_model)
    a, b = seeded(std), seeded(mup)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    x = torch.randint(0, 96, (2, 16))
    assert torch.equal(a(x)["logits"], b(x)["logits"])
    # one AdamW step through each model's own param groups: the same weights after it
    for model, cfg in ((a, std), (b, mup)):
        groups = [{**g, "lr": 1e-2 * g["lr_scale"]} for g in param_groups(model, 0.1, cfg)]
        opt = torch.optim.AdamW(groups, lr=1e-2)
        model(x, targets=x)["loss"].backward()
        opt.step()
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_wider_models_start_hidden_matrices_at_sigma_over_sqrt_m(tiny_cfg):
    cfg = tiny_cfg("llama-tiny", d_model=256, n_heads=16, n_kv_heads=8, d_ff=704,
                   parametrization="mup", mup_base_width=64)
    assert width_mult(cfg) == 4.0
    model = seeded(cfg)
    block = model.stack.blocks[0]
    sigma = cfg.init_std
    assert block.self_attn.q_proj.weight.std().item() == pytest.approx(sigma / 2, rel=0.05)
    assert block.ffn.up.weight.std().item() == pytest.approx(sigma / 2, rel=0.05)
    residual = sigma / 2 / math.sqrt(2 * cfg.n_layers)  # residual outputs keep 1/sqrt(2L)
    assert block.ffn.down.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(sigma, rel=0.05)
    assert model.lm_head.weight.std().item() == pytest.approx(sigma, rel=0.05)  # untied


@pytest.mark.parametrize("tied", [True, False])
def test_logits_are_divided_by_m_tied_or_not(tied, tiny_cfg):
    std = tiny_cfg("gpt-tiny", dropout=0.0, tie_embeddings=tied)
    mup = tiny_cfg("gpt-tiny", dropout=0.0, tie_embeddings=tied, parametrization="mup",
                   mup_base_width=16)
    a, b = seeded(std), seeded(mup)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 96, (2, 12))
    torch.testing.assert_close(b(x)["logits"], a(x)["logits"] / 4, rtol=1e-5, atol=1e-6)
    assert output_scale(mup) == 0.25


def test_attention_is_one_over_head_dim_normalised_at_the_base_head_dim(tiny_cfg):
    cfg = tiny_cfg("gpt-tiny", parametrization="mup", mup_base_width=64, mup_base_head_dim=4)
    assert cfg.head_dim == 16 and attention_scale(cfg) == pytest.approx(2 / 16)
    assert attention_scale(tiny_cfg("gpt-tiny", parametrization="mup", mup_base_width=32)) \
        is None  # heads added with width: SDPA's own 1/sqrt(head_dim)
    assert attention_scale(tiny_cfg("gpt-tiny", mup_base_head_dim=4)) is None  # standard
    model = seeded(cfg)
    assert model.stack.blocks[0].self_attn.scale == pytest.approx(0.125)


def test_param_groups_by_role(tiny_cfg):
    cfg = tiny_cfg("llama-tiny", d_model=128, n_heads=8, n_kv_heads=4, d_ff=352,
                   parametrization="mup", mup_base_width=64)
    model = seeded(cfg)
    groups = param_groups(model, 0.1, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {g["name"]: (g["lr_scale"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
           for g in groups}
    assert list(got) == ["embedding", "hidden", "vector"]
    assert got["embedding"][:2] == (1.0, 0.1)
    assert got["embedding"][2] == ["lm_head.weight", "tok_emb.weight"]
    assert got["hidden"][:2] == (0.5, 0.2)  # lr / m, decay × m: lr·decay unchanged
    assert all(n.startswith("stack.") and n.endswith(".weight") for n in got["hidden"][2])
    assert len(got["hidden"][2]) == 6 * cfg.n_layers  # q, kv, out, up, gate, down
    assert got["vector"][:2] == (1.0, 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert [s.name for s in group_specs(tiny_cfg("gpt-tiny"), 0.1)] == ["decay", "no_decay"]


def _problems(**model) -> str:
    base = dict(family="decoder", max_seq_len=32, d_model=64, n_heads=4, n_layers=2)
    with pytest.raises(ConfigError) as err:
        validate_section(ModelConfig, {**base, **model}, source="m.yaml")
    return str(err.value)


def test_the_config_refuses_what_mup_cannot_apply_to_naming_the_keys():
    text = _problems(parametrization="mup")
    assert "mup_base_width" in text and "required with parametrization mup" in text
    text = _problems(family="encdec", n_layers=None, n_encoder_layers=1, n_decoder_layers=1,
                     parametrization="mup", mup_base_width=32)
    assert "parametrization" in text and "model.family=decoder" in text
    text = _problems(parametrization="mup", mup_base_width=32, init="xavier",
                     scale_embeddings=True)
    assert "init xavier" in text and "scale_embeddings" in text
    ok = dict(family="decoder", max_seq_len=32, d_model=64, n_heads=4, n_layers=2)
    assert ModelConfig(**ok, mup_base_width=32).parametrization == "standard"  # ignored
