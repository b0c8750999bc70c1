"""FLOP accounting for training (forward + backward = 3 x forward) and model FLOP utilisation.

Decoder, per token at sequence length T (nanoGPT / PaLM appendix B):
    6·N + 12·L·d·T
  N = parameters without position embeddings (the token embedding counts once: it is the output
  matmul when tied; untied models count embedding and head both, as nanoGPT does),
  6·N = 2 FLOPs per multiply-add x 3 (forward + backward) for every weight,
  12·L·d·T = the two attention matmuls (Q·K^T and A·V, 2·T·d multiply-adds each per token per
  layer) x 2 x 3. Counted dense: causal and document masks are not subtracted (as nanoGPT).

Encoder-decoder, source length S, target length T (default T = S), FLOPs of one example:
    S·(6·N_enc + 12·L_enc·d·S)                   encoder: bidirectional self-attention over S
  + S·6·N_xkv                                    cross-attention K/V projections of the memory
  + T·(6·(N_dec + N_out) + 12·L_dec·d·(T + S))   decoder: causal self + cross attention
  N_enc / N_dec = encoder / decoder stack parameters (N_dec without the cross K/V projections,
  N_xkv), N_out = the output projection V·d (counted even when tied). flops_per_token is that
  divided by S: FLOPs per *source* token, the tokens a span-corruption batch holds in input_ids.

Torch-free: the parameter counts come from `pretrain.model.shapes.parameter_shapes` (what
build_model makes, name -> shape; tests/pretrain/model/test_shapes.py keeps the two equal), so
`arrowtrain plan` answers without importing torch. Only `peak_flops()` without a name asks torch.
"""

from __future__ import annotations

import math

from pretrain.model.config import ModelConfig
from pretrain.model.shapes import parameter_shapes

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device_name: str | None = None) -> float | None:
    """Peak bf16 FLOP/s for a GPU name (default: torch.cuda.get_device_name()); None if unknown
    or when there is no GPU."""
    if device_name is None:
        import torch

        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    name = device_name.upper()
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def mfu(tokens_per_sec: float, flops_per_token: int, n_gpus: int = 1,
        peak: float | None = None) -> float:
    """Achieved / peak FLOP/s over all GPUs. `peak` per GPU defaults to peak_flops() of this
    machine's GPU; with no known GPU (CPU runs) the result is nan, never a made-up figure."""
    peak = peak_flops() if peak is None else peak
    if peak is None:
        return float("nan")
    return tokens_per_sec * flops_per_token / (n_gpus * peak)


def _count(shapes: dict[str, tuple[int, ...]], names) -> int:
    return sum(math.prod(shapes[n]) for n in names)


def flops_per_token(cfg: ModelConfig, seq_len: int, target_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per token; see the module docstring for the formula.
    The parameter counts are those of the real model (tied weights once), without torch."""
    if cfg.vocab_size is None:
        raise ValueError("flops_per_token needs model.vocab_size to be set")
    shapes = parameter_shapes(cfg)
    d = cfg.d_model
    if cfg.family == "decoder":
        n = _count(shapes, (k for k in shapes if not k.startswith("positions.")))
        return 6 * n + 12 * cfg.n_layers * d * seq_len
    S, T = seq_len, target_len or seq_len
    n_enc = _count(shapes, (k for k in shapes if k.startswith(("encoder.", "enc_norm."))))
    xkv = [k for k in shapes if k.startswith("decoder.") and ".cross_attn.kv_proj." in k]
    n_dec = _count(shapes, (k for k in shapes if k.startswith(("decoder.", "dec_norm."))
                            and k not in xkv))
    n_out = cfg.vocab_size * d
    per_example = (S * (6 * n_enc + 12 * cfg.n_encoder_layers * d * S)
                   + S * 6 * _count(shapes, xkv)
                   + T * (6 * (n_dec + n_out) + 12 * cfg.n_decoder_layers * d * (T + S)))
    return round(per_example / S)
