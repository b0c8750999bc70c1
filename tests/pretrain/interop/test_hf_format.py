"""Our decoders -> Hugging Face transformers (the tensor renaming of pretrain/interop/hf_format.py):
GPT2LMHeadModel / LlamaForCausalLM load the tensors with nothing missing or left over and give
our fp32 logits within 1e-4; settings without an HF equivalent are refused, naming each field.
transformers is a dev dependency; the toolkit itself never imports it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.dist import REPO
from safetensors.torch import save_file

from pretrain.configlib import load_yaml, validate_section
from pretrain.interop.hf_format import HFFormatError, hf_family, to_hf_config, to_hf_state
from pretrain.model import ModelConfig, build_model

transformers = pytest.importorskip("transformers")  # a dev dependency: always there in CI

BASE = dict(family="decoder", vocab_size=96, max_seq_len=32, d_model=64, n_heads=4, n_layers=2)
GPT2_STYLES = {
    "gpt2_tied": {},
    "gpt2_untied_nobias_relu": dict(bias=False, tie_embeddings=False, activation="relu",
                                    d_ff=80, norm_eps=1e-6),
    "gpt2_gelu_tanh": dict(activation="gelu_tanh"),  # -> gelu_new, as OpenAI's GPT-2
    # muP: the attention scale folded into the queries, 1/m into the untied head
    "gpt2_mup_untied": dict(tie_embeddings=False, parametrization="mup", mup_base_width=16,
                            mup_base_head_dim=4),
    "gpt2_mup_tied_at_base": dict(parametrization="mup", mup_base_width=64, mup_base_head_dim=8),
}
LLAMA = dict(position="rope", norm="rmsnorm", activation="swiglu", bias=False)
LLAMA_STYLES = {
    "llama_gqa_untied": dict(LLAMA, n_kv_heads=2, tie_embeddings=False, d_ff=176,
                             rope_theta=500.0, norm_eps=1e-6),
    "llama_geglu_mqa_tied_bias": dict(LLAMA, activation="geglu", n_kv_heads=1, bias=True),
    "llama_mup_gqa_untied": dict(LLAMA, n_kv_heads=2, tie_embeddings=False, d_ff=176,
                                 parametrization="mup", mup_base_width=32, mup_base_head_dim=64),
}


def random_model(cfg: ModelConfig) -> torch.nn.Module:
    """Every parameter (biases and norm gains too) moved away from its init."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def save_hf(cfg: ModelConfig, state: dict, folder) -> None:
    save_file(to_hf_state(cfg, state), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config = to_hf_config(cfg, {"bos": None, "eos": 0, "pad": 1})
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("style", [*GPT2_STYLES, *LLAMA_STYLES])
def test_transformers_gives_our_logits(style, tmp_path):
    cfg = ModelConfig(**BASE, **{**GPT2_STYLES, **LLAMA_STYLES}[style])
    ours = random_model(cfg)
    save_hf(cfg, ours.state_dict(), tmp_path)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path,
                                                                 output_loading_info=True)
    want = "GPT2LMHeadModel" if style.startswith("gpt2") else "LlamaForCausalLM"
    assert type(hf).__name__ == want
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len))
    with torch.no_grad():
        a, b = ours(x)["logits"], hf(x).logits
    assert a.shape == b.shape == (2, cfg.max_seq_len, cfg.vocab_size)
    assert (a - b).abs().max() < 1e-4
    # the comparison can fail: one swapped pair of tensors shows
    state = ours.state_dict()
    swap = ("stack.blocks.1.ffn.up.weight", "stack.blocks.1.ffn.down.weight") \
        if style.startswith("gpt2") else ("stack.blocks.1.ffn.up.weight",
                                          "stack.blocks.1.ffn.gate.weight")
    if state[swap[0]].shape == state[swap[1]].shape:
        state[swap[0]], state[swap[1]] = state[swap[1]], state[swap[0]]
    else:
        state[swap[0]] = state[swap[1]].t()
    save_hf(cfg, state, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert (ours(x)["logits"] - hf(x).logits).abs().max() > 1e-3


def test_gpt2_without_biases_gets_zero_biases():
    cfg = ModelConfig(**BASE, bias=False)
    hf = to_hf_state(cfg, build_model(cfg).state_dict())
    assert torch.equal(hf["transformer.h.0.attn.c_attn.bias"], torch.zeros(3 * 64))
    assert torch.equal(hf["transformer.ln_f.bias"], torch.zeros(64))
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == (64, 3 * 64)  # Conv1D: (in, out)
    assert "lm_head.weight" not in hf  # tied: transformers ties it to wte


@pytest.mark.parametrize("update, fields", [
    (dict(norm_position="post"), ["model.norm_position"]),
    (dict(scale_embeddings=True), ["model.scale_embeddings"]),
    (dict(norm="rmsnorm", activation="swiglu", n_kv_heads=2),
     ["model.norm", "model.activation", "model.n_kv_heads"]),
    (dict(position="rope", activation="gelu"), ["model.norm", "model.activation"]),
    (dict(position="sinusoidal"), ["model.position"]),
    (dict(parametrization="mup", mup_base_width=16), ["model.parametrization=mup",
                                                      "model.tie_embeddings=true", "0.25"]),
    (dict(family="encdec", n_layers=None, n_encoder_layers=1, n_decoder_layers=1),
     ["model.family"]),
])
def test_settings_without_an_hf_equivalent_are_refused_by_name(update, fields):
    cfg = ModelConfig(**{**BASE, **update})
    with pytest.raises(HFFormatError) as e:
        hf_family(cfg)
    for field in fields:  # every problem in one error
        assert field in str(e.value)


@pytest.mark.parametrize("name, family", [("gpt-tiny", "gpt2"), ("gpt2-124m", "gpt2"),
                                          ("gpt2-350m", "gpt2"), ("llama-tiny", "llama"),
                                          ("llama-1.1b", "llama")])
def test_shipped_decoder_configs_map_to_their_family(name, family):
    data = load_yaml(REPO / "configs" / "model" / f"{name}.yaml")
    cfg = validate_section(ModelConfig, {**data, "vocab_size": 512}, source=name)
    assert hf_family(cfg) == family


def test_the_toolkit_never_imports_transformers():
    code = ("import sys, pretrain.interop.export, pretrain.interop.hf_format, "
            "arrowtrain.commands.export, arrowtrain.commands.import_hf; "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'transformers'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
