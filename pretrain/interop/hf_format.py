"""Our decoders <-> Hugging Face `transformers` checkpoints, as plain tensor renaming.

    GPT-2 style (learned positions, LayerNorm, GELU/ReLU)  <->  GPT2LMHeadModel ("gpt2")
    Llama style (RoPE, RMSNorm, SwiGLU/GeGLU, GQA)         <->  LlamaForCausalLM ("llama")

Both directions read and write plain dicts of tensors and the `config.json` mapping; nothing
here imports `transformers` (it is a test-only dependency). The renaming table is in
docs/interop.md ("Export to Hugging Face"). Our RoPE rotates the pairs (x_i, x_{i+hd/2}) — the
`rotate_half` layout of HF Llama — so q/k weights are copied as they are, never permuted.
A model setting without an HF equivalent is refused with every such field named at once
(HFFormatError). muP's attention scale and (untied) output multiplier are folded into the
weights (`fold_mup`); the output multiplier of a tied head is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from pretrain.model.config import ModelConfig
from pretrain.model.mup import attention_scale, output_scale

Tensors = dict[str, torch.Tensor]


class HFFormatError(ValueError):
    """A config that one side cannot express; the message names every field at fault."""


# ---------------------------------------------------------------------------- which family

# ours -> HF activation_function; gelu is the exact (erf) GELU, gelu_tanh its tanh approximation
GPT2_ACT = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}
GPT2_ACT_ALIASES = {"gelu_pytorch_tanh": "gelu_tanh"}  # the same maths under another HF name
LLAMA_ACT = {"swiglu": "silu", "geglu": "gelu"}  # ours (gated) -> HF hidden_act


def hf_family(cfg: ModelConfig) -> str:
    """"gpt2" or "llama" for a model we can export; HFFormatError naming every field that has
    no equivalent in the HF class it maps to."""
    if cfg.family != "decoder":
        raise HFFormatError(
            "model.family=encdec: only decoder-only models are exported to Hugging Face (our "
            "Transformer/T5 encoder-decoders have no matching transformers class whose weights "
            "and maths agree with ours; export them with --format safetensors)")
    if cfg.position == "sinusoidal":
        raise HFFormatError("model.position=sinusoidal: neither GPT2LMHeadModel (learned) nor "
                            "LlamaForCausalLM (rope) has sinusoidal positions")
    family = "gpt2" if cfg.position == "learned" else "llama"
    problems = _class_problems(cfg, family)
    if cfg.norm_position != "pre":
        problems.append("model.norm_position=post: HF GPT-2 and Llama are pre-norm")
    if cfg.scale_embeddings:
        problems.append("model.scale_embeddings=true: HF GPT-2 and Llama do not scale "
                        "token embeddings by sqrt(d_model)")
    if output_scale(cfg) != 1.0 and cfg.tie_embeddings:
        problems.append(f"model.parametrization=mup with model.tie_embeddings=true: the output "
                        f"multiplier 1/m = mup_base_width/d_model = {output_scale(cfg):.6g} "
                        "cannot be folded into an output layer tied to the token embedding, "
                        "and HF GPT-2 and Llama have no logit multiplier (train with "
                        "tie_embeddings=false, or at d_model == mup_base_width)")
    if problems:
        cls = "GPT2LMHeadModel" if family == "gpt2" else "LlamaForCausalLM"
        raise HFFormatError(f"cannot export to {cls} (model.position={cfg.position}): "
                            + "; ".join(problems))
    return family


@dataclass(frozen=True)
class HFClass:
    """What an HF class fixes that our config may set otherwise (named in refusals)."""
    name: str  # in messages: "GPT-2", "Llama"
    norm: str  # ours
    norm_name: str
    activations: dict[str, str]  # ours -> HF
    mlp: str  # "is not gated" / "is gated"
    grouped_query: bool


HF_CLASSES = {
    "gpt2": HFClass("GPT-2", "layernorm", "LayerNorm", GPT2_ACT, "is not gated", False),
    "llama": HFClass("Llama", "rmsnorm", "RMSNorm", LLAMA_ACT, "is gated", True),
}


def _class_problems(cfg: ModelConfig, family: str) -> list[str]:
    c, out = HF_CLASSES[family], []
    if cfg.norm != c.norm:
        out.append(f"model.norm={cfg.norm}: {c.name} uses {c.norm_name}")
    if cfg.activation not in c.activations:
        out.append(f"model.activation={cfg.activation}: {c.name}'s MLP {c.mlp} "
                   f"(one of {', '.join(c.activations)})")
    if not c.grouped_query and cfg.kv_heads != cfg.n_heads:
        out.append(f"model.n_kv_heads={cfg.n_kv_heads}: {c.name} has no grouped-query attention")
    return out


# ---------------------------------------------------------------------------- config.json

def to_hf_config(cfg: ModelConfig, special: dict[str, int | None]) -> dict[str, Any]:
    """config.json for `cfg` (fp32); `special`: bos/eos/pad token ids (None: absent)."""
    family = hf_family(cfg)
    ids = {f"{k}_token_id": v for k, v in special.items()}
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "initializer_range": cfg.init_std, "dtype": "float32", **ids}
    if family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
                "n_head": cfg.n_heads, "n_inner": cfg.ffn_dim,
                "activation_function": GPT2_ACT[cfg.activation],
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout,
                "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "hidden_act": LLAMA_ACT[cfg.activation], "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "attention_dropout": cfg.dropout,
            # transformers >= 5 reads rope_parameters, 4.x reads rope_theta / rope_scaling
            "rope_theta": cfg.rope_theta, "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}}


def _get(hf: dict[str, Any], key: str, default: Any = None) -> Any:
    value = hf.get(key, default)
    return default if value is None else value


def from_hf_config(hf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(family, our model config as a dict) for an HF config.json mapping; HFFormatError naming
    every field we cannot reproduce."""
    kind = hf.get("model_type")
    if kind not in ("gpt2", "llama"):
        raise HFFormatError(f"model_type={kind!r}: only gpt2 and llama are imported")
    problems = _field_problems(hf, kind)
    if problems:
        raise HFFormatError(f"config.json of this {kind} model: " + "; ".join(problems))
    problems = _gpt2_refusals(hf) if kind == "gpt2" else _llama_refusals(hf)
    if problems:
        raise HFFormatError(f"cannot import this {kind} model: " + "; ".join(problems))
    tied = bool(_get(hf, "tie_word_embeddings", kind == "gpt2"))
    if kind == "gpt2":
        d = hf["n_embd"]
        return kind, {
            "family": "decoder", "vocab_size": hf["vocab_size"], "max_seq_len": hf["n_positions"],
            "d_model": d, "n_heads": hf["n_head"], "d_ff": _get(hf, "n_inner", 4 * d),
            "n_layers": hf["n_layer"], "norm": "layernorm",
            "norm_eps": _get(hf, "layer_norm_epsilon", 1e-5), "position": "learned",
            "activation": _gpt2_activation(hf),
            "bias": True, "tie_embeddings": tied, "init_std": _get(hf, "initializer_range", 0.02)}
    rope = _get(hf, "rope_parameters", {}) or {}
    return kind, {
        "family": "decoder", "vocab_size": hf["vocab_size"],
        "max_seq_len": _get(hf, "max_position_embeddings", 2048), "d_model": hf["hidden_size"],
        "n_heads": hf["num_attention_heads"],
        "n_kv_heads": _get(hf, "num_key_value_heads", hf["num_attention_heads"]),
        "d_ff": hf["intermediate_size"], "n_layers": hf["num_hidden_layers"], "norm": "rmsnorm",
        "norm_eps": _get(hf, "rms_norm_eps", 1e-6), "position": "rope",
        "rope_theta": float(rope.get("rope_theta") or _get(hf, "rope_theta", 10000.0)),
        "activation": {v: k for k, v in LLAMA_ACT.items()}[_get(hf, "hidden_act", "silu")],
        "bias": bool(_get(hf, "attention_bias", False)), "tie_embeddings": tied,
        "init_std": _get(hf, "initializer_range", 0.02)}


# config.json fields read on import, by type: (required ints, optional ints, optional numbers,
# optional strings, optional objects). Checked before any is used, so a missing key, a null, a
# list or a string where a number goes is a message naming the field, never a traceback.
MAX_DIM = 1 << 24  # any width, count or length beyond this is no real model (16.7M)
HF_FIELDS = {
    "gpt2": (("vocab_size", "n_positions", "n_embd", "n_head", "n_layer"), ("n_inner",),
             ("layer_norm_epsilon", "initializer_range"), ("activation_function",), ()),
    "llama": (("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
               "num_hidden_layers"), ("num_key_value_heads", "max_position_embeddings",
                                      "head_dim", "pretraining_tp"),
              ("rms_norm_eps", "rope_theta", "initializer_range", "partial_rotary_factor"),
              ("hidden_act",), ("rope_parameters", "rope_scaling")),
}


def _int_problem(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key}: {json_repr(value)} is not an integer"
    if not 1 <= value <= MAX_DIM:
        return f"{key}: {value} is outside 1..{MAX_DIM}"
    return None


def json_repr(value: Any) -> str:
    """A config.json value as JSON writes it, cut to 40 characters (null, "12", [1, 2])."""
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_problems(hf: dict[str, Any], kind: str) -> list[str]:
    """Each config.json field we read that is missing or of the wrong type (see HF_FIELDS)."""
    import math

    required, ints, numbers, strings, objects = HF_FIELDS[kind]
    out = [f"{k}: missing" if k not in hf else _int_problem(k, hf[k]) for k in required]
    out += [_int_problem(k, hf[k]) for k in ints if hf.get(k) is not None]
    for k in numbers:
        v = hf.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v)):
            out.append(f"{k}: {json_repr(v)} is not a finite number")
    out += [f"{k}: {json_repr(hf[k])} is not a string" for k in strings
            if hf.get(k) is not None and not isinstance(hf[k], str)]
    out += [f"{k}: {json_repr(hf[k])} is not an object" for k in objects
            if hf.get(k) is not None and not isinstance(hf[k], dict)]
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_theta") is not None and (
            isinstance(rope["rope_theta"], bool)
            or not isinstance(rope["rope_theta"], (int, float))):
        out.append(f"rope_parameters.rope_theta: {json_repr(rope['rope_theta'])} is not a "
                   "number")
    return [p for p in out if p]


def _gpt2_activation(hf: dict[str, Any]) -> str | None:
    act = _get(hf, "activation_function", "gelu_new")
    return GPT2_ACT_ALIASES.get(act) or {v: k for k, v in GPT2_ACT.items()}.get(act)


def _gpt2_refusals(hf: dict[str, Any]) -> list[str]:
    out = []
    if _gpt2_activation(hf) is None:
        names = sorted({*GPT2_ACT.values(), *GPT2_ACT_ALIASES})
        out.append(f"activation_function={hf['activation_function']!r}: we have "
                   f"{', '.join(names)}")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                "add_cross_attention"):
        if hf.get(key):
            out.append(f"{key}=true: not supported")
    if hf.get("scale_attn_weights") is False:
        out.append("scale_attn_weights=false: our attention always scales by 1/sqrt(head_dim)")
    return out


def _llama_refusals(hf: dict[str, Any]) -> list[str]:
    out = []
    act = _get(hf, "hidden_act", "silu")
    if act not in LLAMA_ACT.values():
        out.append(f"hidden_act={act!r}: we have silu (SwiGLU) and gelu (GeGLU)")
    rope = _get(hf, "rope_parameters", {}) or {}
    scaling = hf.get("rope_scaling") or {}
    for key, value in (("rope_parameters.rope_type", rope.get("rope_type", "default")),
                       ("rope_scaling.rope_type", scaling.get("rope_type",
                                                              scaling.get("type", "default")))):
        if value != "default":
            out.append(f"{key}={value!r}: only plain RoPE (no scaling) is supported")
    if rope.get("partial_rotary_factor", 1.0) != 1.0 or hf.get("partial_rotary_factor", 1.0) != 1.0:
        out.append("partial_rotary_factor: only full-width RoPE is supported")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        out.append(f"attention_bias={hf.get('attention_bias')} with mlp_bias="
                   f"{hf.get('mlp_bias')}: our model.bias covers both")
    heads, width = hf.get("num_attention_heads"), hf.get("hidden_size")
    head_dim = hf.get("head_dim")
    if head_dim is not None and heads and width and head_dim * heads != width:
        out.append(f"head_dim={head_dim}: ours is hidden_size / num_attention_heads "
                   f"({width} / {heads})")
    if (hf.get("pretraining_tp") or 1) != 1:
        out.append(f"pretraining_tp={hf['pretraining_tp']}: only 1 is supported")
    return out


# ---------------------------------------------------------------------------- tensors

# Per block: (our name, HF name, how). how: "=" same tensor, "T" transposed (GPT-2 Conv1D),
# "qkv" our q_proj + kv_proj <-> GPT-2 c_attn, "kv" our kv_proj <-> Llama k_proj + v_proj.
GPT2_BLOCK = [("norm1.{p}", "ln_1.{p}", "="), ("self_attn.q_proj.{p}", "attn.c_attn.{p}", "qkv"),
              ("self_attn.out_proj.{p}", "attn.c_proj.{p}", "T"), ("norm2.{p}", "ln_2.{p}", "="),
              ("ffn.up.{p}", "mlp.c_fc.{p}", "T"), ("ffn.down.{p}", "mlp.c_proj.{p}", "T")]
LLAMA_BLOCK = [("norm1.{p}", "input_layernorm.{p}", "="),
               ("self_attn.q_proj.{p}", "self_attn.q_proj.{p}", "="),
               ("self_attn.kv_proj.{p}", "self_attn.{{}}_proj.{p}", "kv"),
               ("self_attn.out_proj.{p}", "self_attn.o_proj.{p}", "="),
               ("norm2.{p}", "post_attention_layernorm.{p}", "="),
               # our act(up(x)) * gate(x) is HF's act(gate_proj(x)) * up_proj(x)
               ("ffn.up.{p}", "mlp.gate_proj.{p}", "="), ("ffn.gate.{p}", "mlp.up_proj.{p}", "="),
               ("ffn.down.{p}", "mlp.down_proj.{p}", "=")]
TOP = {"gpt2": [("tok_emb.weight", "transformer.wte.weight"),
                ("positions.learned.weight", "transformer.wpe.weight"),
                ("norm_f.weight", "transformer.ln_f.weight"),
                ("norm_f.bias", "transformer.ln_f.bias")],
       "llama": [("tok_emb.weight", "model.embed_tokens.weight"),
                 ("norm_f.weight", "model.norm.weight")]}
PREFIX = {"gpt2": "transformer.h.{i}.", "llama": "model.layers.{i}."}


def _pairs(family: str, n_layers: int):
    """Every (our name, HF name, how) of a family with n_layers blocks."""
    yield from ((ours, hf, "=") for ours, hf in TOP[family])
    block = GPT2_BLOCK if family == "gpt2" else LLAMA_BLOCK
    for i in range(n_layers):
        for ours, hf, how in block:
            for p in ("weight", "bias"):
                yield (f"stack.blocks.{i}." + ours.format(p=p),
                       PREFIX[family].format(i=i) + hf.format(p=p), how)


def to_hf_state(cfg: ModelConfig, ours: Tensors) -> Tensors:
    """Our state dict -> HF tensors (contiguous fp32 copies). GPT-2 without biases gets zero
    biases (GPT2LMHeadModel always has them; zeros change nothing)."""
    family = hf_family(cfg)
    ours = fold_mup(cfg, {k: v.detach().float() for k, v in ours.items()})
    if family == "gpt2" and not cfg.bias:
        for name in [n for n in ours if n.startswith(("stack.", "norm_f."))]:
            ours.setdefault(name[:-len("weight")] + "bias", torch.zeros(ours[name].shape[0]))
    out: Tensors = {}
    for name, hf, how in _pairs(family, cfg.n_layers):
        if name not in ours:
            continue
        t = ours[name]
        if how == "T":
            out[hf] = t.t() if t.dim() == 2 else t
        elif how == "qkv":  # c_attn holds [q; k; v] as a Conv1D (in, out)
            t = torch.cat([t, ours[name.replace("q_proj", "kv_proj")]], 0)
            out[hf] = t.t() if t.dim() == 2 else t
        elif how == "kv":
            out[hf.format("k")], out[hf.format("v")] = t.chunk(2, 0)
        else:
            out[hf] = t
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def fold_mup(cfg: ModelConfig, ours: Tensors) -> Tensors:
    """muP's scales folded into the weights, so that HF's plain maths computes ours: the
    attention factor s (HF: 1/√d_head) into the query projection (× s·√d_head; RoPE is a
    rotation, so it commutes), the output multiplier 1/m into the untied output layer (a tied
    one is refused by hf_family). Standard models pass unchanged."""
    scale, out_scale = attention_scale(cfg), output_scale(cfg)
    ours = dict(ours)
    if scale is not None:
        fold = scale * math.sqrt(cfg.head_dim)
        for name in [n for n in ours if ".self_attn.q_proj." in n]:
            ours[name] = ours[name] * fold
    if out_scale != 1.0 and not cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["lm_head.weight"] * out_scale
    return ours


def from_hf_state(family: str, cfg: ModelConfig, hf: Tensors) -> Tensors:
    """HF tensors (prefixed as the *ForCausalLM classes save them) -> our state dict. Raises
    HFFormatError naming tensors that are missing or left over."""
    hf = dict(hf)
    out: Tensors = {}
    for name, key, how in _pairs(family, cfg.n_layers):
        src = [key.format("k"), key.format("v")] if how == "kv" else [key]
        if not all(s in hf for s in src):
            continue
        t = [hf.pop(s).float() for s in src]
        if how == "T":
            out[name] = t[0].t() if t[0].dim() == 2 else t[0]
        elif how == "qkv":
            full = t[0].t() if t[0].dim() == 2 else t[0]  # (3C, C) or (3C,)
            c = full.shape[0] // 3
            out[name], out[name.replace("q_proj", "kv_proj")] = full[:c], full[c:]
        else:
            out[name] = torch.cat(t, 0)
    head = hf.pop("lm_head.weight", None)
    out["lm_head.weight"] = out.get("tok_emb.weight") if cfg.tie_embeddings else head
    if out["lm_head.weight"] is None:
        raise HFFormatError("lm_head.weight is missing and tie_word_embeddings is false")
    left = sorted(k for k in hf if not _ignorable(k))
    if left:
        raise HFFormatError(f"tensors we have no place for: {', '.join(left[:8])}"
                            + (f" and {len(left) - 8} more" if len(left) > 8 else ""))
    return {k: v.contiguous().clone() for k, v in out.items()}


def _ignorable(name: str) -> bool:
    """Buffers old transformers versions saved: GPT-2's causal masks, Llama's inv_freq."""
    return name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))


def add_base_prefix(family: str, hf: Tensors) -> Tensors:
    """Checkpoints saved from GPT2Model / LlamaModel lack the `transformer.` / `model.` prefix
    the *ForCausalLM classes use; add it."""
    prefix = "transformer." if family == "gpt2" else "model."
    if any(k.startswith(prefix) for k in hf):
        return hf
    return {k if k == "lm_head.weight" else prefix + k: v for k, v in hf.items()}
