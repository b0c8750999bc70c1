"""The parameters a config builds, name -> shape, without torch: what `build_model(cfg)
.named_parameters()` gives (tied weights once, under their first name). The pre-flight compares
an `init_from` file against it before any rank starts; tests/pretrain/model/test_shapes.py keeps
it equal to the built models."""

from __future__ import annotations

from pretrain.model.config import ModelConfig

Shapes = dict[str, tuple[int, ...]]


def _linear(name: str, n_out: int, n_in: int, bias: bool) -> Shapes:
    return {f"{name}.weight": (n_out, n_in), **({f"{name}.bias": (n_out,)} if bias else {})}


def _norm(name: str, cfg: ModelConfig) -> Shapes:
    bias = cfg.bias and cfg.norm == "layernorm"  # RMSNorm has a gain only
    return {f"{name}.weight": (cfg.d_model,), **({f"{name}.bias": (cfg.d_model,)} if bias else {})}


def _block(prefix: str, cfg: ModelConfig, cross: bool) -> Shapes:
    C, hd, b = cfg.d_model, cfg.head_dim, cfg.bias
    out: Shapes = {}
    for attn, norm in [("self_attn", "norm1"), *([("cross_attn", "norm_cross")] if cross else [])]:
        out |= _linear(f"{prefix}{attn}.q_proj", cfg.n_heads * hd, C, b)
        out |= _linear(f"{prefix}{attn}.kv_proj", 2 * cfg.kv_heads * hd, C, b)
        out |= _linear(f"{prefix}{attn}.out_proj", C, C, b)
        out |= _norm(f"{prefix}{norm}", cfg)
    out |= _linear(f"{prefix}ffn.up", cfg.ffn_dim, C, b)
    if cfg.activation in ("swiglu", "geglu"):
        out |= _linear(f"{prefix}ffn.gate", cfg.ffn_dim, C, b)
    out |= _linear(f"{prefix}ffn.down", C, cfg.ffn_dim, b)
    return out | _norm(f"{prefix}norm2", cfg)


def _stack(name: str, cfg: ModelConfig, n: int, cross: bool = False) -> Shapes:
    out: Shapes = {}
    for i in range(n):
        out |= _block(f"{name}.blocks.{i}.", cfg, cross)
    return out


def parameter_shapes(cfg: ModelConfig) -> Shapes:
    """{name: shape} of every distinct parameter of build_model(cfg) (vocab_size must be set)."""
    V, C, pre = cfg.vocab_size, cfg.d_model, cfg.norm_position == "pre"
    out: Shapes = {"tok_emb.weight": (V, C)}
    learned = {"weight": (cfg.max_seq_len, C)} if cfg.position == "learned" else {}
    if cfg.family == "decoder":
        out |= {f"positions.learned.{k}": s for k, s in learned.items()}
        out |= _stack("stack", cfg, cfg.n_layers)
        out |= _norm("norm_f", cfg) if pre else {}
    else:
        relative = {"weight": (cfg.relative_buckets, cfg.n_heads)} \
            if cfg.position == "t5_relative" else {}  # one bias table per stack
        for side in ("enc", "dec"):
            out |= {f"{side}_positions.learned.{k}": s for k, s in learned.items()}
            out |= {f"{side}_positions.relative.{k}": s for k, s in relative.items()}
        out |= _stack("encoder", cfg, cfg.n_encoder_layers)
        out |= _stack("decoder", cfg, cfg.n_decoder_layers, cross=True)
        out |= (_norm("enc_norm", cfg) | _norm("dec_norm", cfg)) if pre else {}
    return out | ({} if cfg.tie_embeddings else {"lm_head.weight": (V, C)})


def shape_mismatches(cfg: ModelConfig, got: Shapes) -> list[str]:
    """One line per parameter of `cfg` that `got` (a file's {tensor: shape}) lacks or holds in
    another shape, and per tensor of `got` the model has no place for; [] when they agree. A
    config that declares more layers than the file has tensors (e.g. n_layers 100000 or 1e30 in
    an edited config) is one line at once: nothing is enumerated or built for it."""
    if cfg.total_layers > len(got):
        return [f"the config declares {cfg.total_layers} layers but the file holds only "
                f"{len(got)} tensors"]
    want = parameter_shapes(cfg)
    lines = [f"{n}: missing from the file (config: {list(s)})" for n, s in want.items()
             if n not in got]
    lines += [f"{n}: file {list(got[n])}, config {list(s)}" for n, s in want.items()
              if n in got and tuple(got[n]) != s]
    lines += [f"{n}: in the file, not in the config's model" for n in got if n not in want]
    return lines
