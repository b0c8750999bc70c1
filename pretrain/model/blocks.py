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
    rope_angles,
    sinusoidal_table,
)


class Block(nn.Module):
    """Pre-norm: x + drop(f(norm(x))). Post-norm (2017 paper): norm(x + drop(f(x)))."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()

        def attention() -> Attention:
            return Attention(cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.bias, cfg.dropout)

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
                cache=None):
        x = self._residual(x, self.norm1, lambda h: self.self_attn(
            h, mask=mask, causal=causal, rope=rope, cache=cache))  # (B, T, C)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(
                h, memory=memory, mask=memory_mask))
        return self._residual(x, self.norm2, self.ffn)


class Stack(nn.Module):
    """`n` blocks applied in turn; `caches` (generation) holds one KVCache per block."""

    def __init__(self, cfg: ModelConfig, n: int, cross: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, cross) for _ in range(n))

    def forward(self, x: torch.Tensor, caches=None, **kw) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, **kw) if caches is None else block(x, cache=caches[i], **kw)  # (B, T, C)
        return x


class Positions(nn.Module):
    """Position information for one stack: added embeddings (learned / sinusoidal) or the
    cos/sin tables RoPE applies inside attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind, self.max_len = cfg.position, cfg.max_seq_len
        self.learned = nn.Embedding(cfg.max_seq_len, cfg.d_model) if self.kind == "learned" else None
        if self.kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(cfg.max_seq_len, cfg.d_model),
                                 persistent=False)
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta

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
