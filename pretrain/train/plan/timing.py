"""Time and cost from FLOPs: the trainer's own counter (pretrain.model.flops.flops_per_token,
6·N + 12·L·d·T per token, what it logs MFU with), an assumed MFU and the GPU's peak.

    tokens/s  = GPUs × peak FLOP/s × MFU / (FLOPs per token × recomputation)
    hours     = tokens / (tokens/s) / 3600;  GPU-hours = hours × GPUs;  cost = GPU-hours × price

MFU is counted as the trainer logs it (model FLOPs, no recomputation). Recomputation makes the
GPU do more work for the same tokens (Transformer Math 101: C ≈ 6·N·D, "+1/3" with full
recomputation — one more forward of each checkpointed block); the op-level selective policy
recomputes only pointwise ops (no extra matmul FLOPs) unless it also recomputes every second
matmul (about half a forward's matmuls: +1/6). ZeRO-Offload's CPU optimizer step is not
modelled (it is usually slower than the GPU's)."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.model.flops import flops_per_token


def recompute_factor(ac, n_blocks: int) -> float:
    """Hardware FLOPs / model FLOPs for a checkpointing policy (train.activation_checkpointing)."""
    if ac.mode == "none":
        return 1.0
    if ac.mode == "selective":
        return 1.0 + (1 / 6 if ac.selective_mm == "every_second" else 0.0)
    share = sum(1 for i in range(n_blocks) if ac.checkpointed(i)) / max(1, n_blocks)
    return 1.0 + share / 3


@dataclass(frozen=True)
class Timing:
    flops_per_token: int
    recompute: float
    tokens_per_step: int
    tokens_per_sec: float
    step_time_s: float
    tokens: float
    hours: float
    gpu_hours: float
    cost: float | None


def timing(cfg, seq_len: int, src_len: int, gpus: int, peak_flops: float, mfu: float,
           tokens: float | None = None, price_per_gpu_hour: float | None = None) -> Timing:
    """`seq_len`/`src_len` as pretrain.train.plan.lengths gives them. Tokens are the ones the
    trainer counts (input_ids: the source side of encoder-decoders)."""
    m = cfg.model
    fpt = flops_per_token(m, src_len or seq_len, seq_len if src_len else None)
    factor = recompute_factor(cfg.train.activation_checkpointing, m.total_layers)
    per_step = cfg.train.global_batch_size * (src_len or seq_len)
    tokens_per_sec = gpus * peak_flops * mfu / (fpt * factor)
    total = float(tokens if tokens is not None else cfg.train.max_steps * per_step)
    hours = total / tokens_per_sec / 3600
    cost = None if price_per_gpu_hour is None else hours * gpus * price_per_gpu_hour
    return Timing(fpt, factor, per_step, tokens_per_sec, per_step / tokens_per_sec, total, hours,
                  hours * gpus, cost)
