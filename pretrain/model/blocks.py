"""One Transformer block (self-attention, optional cross-attention, feed-forward) and a stack of
them. Activation checkpointing and compilation are applied to the blocks from outside
(pretrain/train/parallelize.py); nothing here knows about either."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.model.config import ModelConfig
from pretrain.model.layers import (
    Attention,
    FeedForward,
    make_norm,
    relative_buckets,
    rope_angles,
    sinusoidal_table,
)
from pretrain.model.mup import attention_scale


class Block(nn.Module):
    """Pre-norm: x + drop(f(norm(x))). Post-norm (2017 paper): norm(x + drop(f(x)))."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()

        def attention() -> Attention:
            return Attention(cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.bias, cfg.dropout,
                             attention_scale(cfg))

        def norm() -> nn.Module:
            return make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

        self.pre_norm = cfg.norm_position == "pre"
        self.self_attn, self.norm1 = attention(), norm()
        self.cross_attn, self.norm_cross = (attention(), norm()) if cross else (None, None)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.bias)
        self.norm2 = norm()
        self.drop = nn.Dropout(cfg.dropout)

    def _residual(self, x, norm, fn):
        if self.pre_norm:
            return x + self.drop(fn(norm(x)))
        return norm(x + self.drop(fn(x)))

    def forward(self, x, mask=None, causal=False, rope=None, memory=None, memory_mask=None,
                cache=None, cross_cache=None):
        x = self._residual(x, self.norm1, lambda h: self.self_attn(
            h, mask=mask, causal=causal, rope=rope, cache=cache))  # (B, T, C)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(
                h, memory=memory, mask=memory_mask, cache=cross_cache))
        return self._residual(x, self.norm2, self.ffn)


class Stack(nn.Module):
    """`n` blocks applied in turn; while decoding, `caches` holds one KVCache per block and
    `cross_caches` (encoder-decoders) one MemoryKV per block."""

    def __init__(self, cfg: ModelConfig, n: int, cross: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, cross) for _ in range(n))

    def forward(self, x: torch.Tensor, caches=None, cross_caches=None, **kw) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if caches is None:
                x = block(x, **kw)  # (B, T, C)
            elif cross_caches is None:
                x = block(x, cache=caches[i], **kw)
            else:
                x = block(x, cache=caches[i], cross_cache=cross_caches[i], **kw)
        return x


class Positions(nn.Module):
    """Position information for one stack: added embeddings (learned / sinusoidal), the
    cos/sin tables RoPE applies inside attention, or T5's relative position bias (one table of
    buckets x heads for the whole stack; `bidirectional` for an encoder)."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool = False):
        super().__init__()
        self.kind, self.max_len = cfg.position, cfg.max_seq_len
        self.learned = nn.Embedding(cfg.max_seq_len, cfg.d_model) if self.kind == "learned" else None
        if self.kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(cfg.max_seq_len, cfg.d_model),
                                 persistent=False)
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta
        self.relative = nn.Embedding(cfg.relative_buckets, cfg.n_heads) \
            if self.kind == "t5_relative" else None
        self.bidirectional = bidirectional
        self.buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance

    def check(self, T: int, offset: int = 0) -> None:
        if offset + T > self.max_len:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_seq_len={self.max_len}")

    def additive(self, pos: torch.Tensor) -> torch.Tensor | None:
        """pos (T,) or (B, T) -> embeddings (..., T, C) to add to the tokens, or None (RoPE)."""
        if self.kind == "learned":
            return self.learned(pos)
        if self.kind == "sinusoidal":
            return self.table[pos]
        return None

    def rope(self, pos: torch.Tensor):
        """pos (T,) or (B, T) -> (cos, sin) shaped (1|B, 1, T, hd/2), or None. Computed in
        float32 on every call (cheap), so a bf16 cast of the model cannot blur the angles."""
        if self.kind != "rope":
            return None
        angles = rope_angles(pos, self.head_dim, self.rope_theta)  # (T | B T, hd/2)
        angles = angles[None, None] if pos.dim() == 1 else angles[:, None]
        return angles.cos(), angles.sin()

    def bias(self, q_len: int, k_len: int, offset: int = 0,
             device: torch.device | None = None) -> torch.Tensor | None:
        """T5: the (1, h, q_len, k_len) float32 bias of queries at positions offset.. over keys
        at 0..k_len-1, added to every layer's attention scores; None for other positions."""
        if self.relative is None:
            return None
        queries = torch.arange(offset, offset + q_len, device=device)[:, None]  # (q, 1)
        keys = torch.arange(k_len, device=device)[None, :]  # (1, k)
        bucket = relative_buckets(keys - queries, self.bidirectional, self.buckets,
                                  self.max_distance)  # (q, k)
        return self.relative(bucket).permute(2, 0, 1)[None].float()  # (1, h, q, k)
