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
"""

from __future__ import annotations

import torch

from pretrain.model.config import ModelConfig

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device_name: str | None = None) -> float | None:
    """Peak bf16 FLOP/s for a GPU name (default: torch.cuda.get_device_name()); None if unknown
    or when there is no GPU."""
    if device_name is None:
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


def _count(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def flops_per_token(cfg: ModelConfig, seq_len: int, target_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per token; see the module docstring for the formula.
    The parameter counts come from the real model built on the meta device (no memory used)."""
    from pretrain.model import build_model

    if cfg.vocab_size is None:
        raise ValueError("flops_per_token needs model.vocab_size to be set")
    with torch.device("meta"):
        model = build_model(cfg)
    d = cfg.d_model
    if cfg.family == "decoder":
        skip = {id(p) for p in model.positions.parameters()}
        n = _count(p for p in model.parameters() if id(p) not in skip)
        return 6 * n + 12 * cfg.n_layers * d * seq_len
    S, T = seq_len, target_len or seq_len
    n_enc = _count([*model.encoder.parameters(), *model.enc_norm.parameters()])
    xkv = [p for b in model.decoder.blocks for p in b.cross_attn.kv_proj.parameters()]
    skip = {id(p) for p in xkv}
    n_dec = _count(p for p in [*model.decoder.parameters(), *model.dec_norm.parameters()]
                   if id(p) not in skip)
    n_out = model.lm_head.weight.numel()
    per_example = (S * (6 * n_enc + 12 * cfg.n_encoder_layers * d * S)
                   + S * 6 * _count(xkv)
                   + T * (6 * (n_dec + n_out) + 12 * cfg.n_decoder_layers * d * (T + S)))
    return round(per_example / S)
