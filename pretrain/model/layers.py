"""Building blocks shared by both families: norms, positions, attention, feed-forward."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # torch >= 2.5 (the floor); guarded so a build without it still runs every other path
    from torch.nn.attention import flex_attention as _flex
except ImportError:  # pragma: no cover
    _flex = None


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    return nn.LayerNorm(dim, eps=eps, bias=bias)


# ----------------------------------------------------------------------------- positions

def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """The 2017 paper's PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table  # (P, d)


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Positions (...,) -> rotation angles (..., hd/2) in float32: pos * theta^(-2i/hd)."""
    i = torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device)
    inv_freq = 1.0 / theta ** (i / head_dim)
    return pos.float()[..., None] * inv_freq


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) of x (B, h, T, hd) by the angles in cos/sin (B|1, 1, T, hd/2).
    The score q_m . k_n then depends on m - n only."""
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


def relative_buckets(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                     max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (key position - query position), as
    `_relative_position_bucket` of T5 / mesh-tensorflow: in the encoder (bidirectional) half the
    buckets are for keys after the query; in the decoder only keys at or before it exist. Of a
    direction's n buckets, distances below n/2 get one each, larger ones share log-spaced
    buckets up to max_distance; beyond it, the last bucket."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) non-decreasing document ids -> (B, T) positions restarting at 0 in each document."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


def doc_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) doc ids -> (B, 1, T, T) boolean mask, True = may attend (same doc, not future)."""
    T = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


# flex_attention: used only by document masking with the flex kernel. Uncompiled it materialises
# the full score matrix, so on a GPU both it and the mask builder go through torch.compile (once,
# here; inside an already compiled model they are traced as part of it).
_COMPILED: dict[str, object] = {}


def _flex_fn(name: str, device: torch.device):
    if _flex is None:
        raise RuntimeError("model.doc_mask_kernel flex needs torch.nn.attention.flex_attention "
                           "(torch >= 2.5)")
    fn = getattr(_flex, name)
    if device.type != "cuda" or torch.compiler.is_compiling():
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def doc_block_mask(doc_ids: torch.Tensor):
    """(B, T) doc ids -> a flex_attention BlockMask with doc_causal_mask's rule. Build it once
    per forward and pass it to every layer: only the 128x128 tiles holding an allowed pair are
    computed, the rest of the T x T square is skipped."""
    B, T = doc_ids.shape

    def same_doc_not_future(b, h, q, kv):
        return (doc_ids[b, q] == doc_ids[b, kv]) & (q >= kv)

    create = _flex_fn("create_block_mask", doc_ids.device)
    return create(same_doc_not_future, B, None, T, T, device=doc_ids.device)


def flex_attention(q, k, v, block_mask, enable_gqa: bool,
                   scale: float | None = None) -> torch.Tensor:
    """q (B, h, T, hd), k/v (B, kv, T, hd) -> (B, h, T, hd) under a BlockMask."""
    fn = _flex_fn("flex_attention", q.device)
    return fn(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa, scale=scale)


# ----------------------------------------------------------------------------- attention

class Attention(nn.Module):
    """Multi-head attention with grouped-query heads, through SDPA (flash kernels on GPU).

    Self-attention when `memory` is None, cross-attention over `memory` otherwise. `mask` is an
    SDPA boolean mask (True = attend), an additive float mask (T5's relative position bias with
    -inf where hidden), a flex_attention BlockMask (doc_block_mask), or None; `causal` takes
    the is_causal fast path. While decoding, `cache` is the layer's KVCache (self-attention:
    new keys and values appended) or MemoryKV (cross-attention: the memory's keys and values,
    projected on the first step only). `scale` multiplies q·k (None: 1/sqrt(head_dim)).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bias: bool, dropout: float,
                 scale: float | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.scale = scale  # factor of q·k; None: 1/sqrt(head_dim) (muP: pretrain/model/mup.py)
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj.is_residual_out = True  # scaled init
        self.dropout = dropout

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hd)

    def _keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(source).chunk(2, dim=-1)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)  # (B, kv, S, hd)

    def forward(self, x, memory=None, mask=None, causal=False, rope=None, cache=None):
        B, T, C = x.shape
        q = self._heads(self.q_proj(x), self.n_heads)  # (B, h, T, hd)
        if memory is not None and cache is not None:  # cross-attention while decoding
            k, v = cache.get(lambda: self._keys_values(memory))  # (B, kv, S, hd), once
        else:
            k, v = self._keys_values(x if memory is None else memory)  # (B, kv, S, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None and memory is None:
            k, v = cache.update(k, v)  # (B, kv, past + T, hd)
        y = self._core(q, k, v, mask, causal)  # (B, h, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))

    def _core(self, q, k, v, mask, causal):
        """Grouped-query heads share K/V inside the kernel (`enable_gqa`, torch >= 2.5): no
        repeated copy of k and v is made (the math fallback still repeats them)."""
        gqa = self.n_kv_heads != self.n_heads
        if mask is not None and not isinstance(mask, torch.Tensor):  # a flex BlockMask
            return flex_attention(q, k, v, mask, enable_gqa=gqa, scale=self.scale)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                              is_causal=causal and mask is None, enable_gqa=gqa,
                                              scale=self.scale)


# ----------------------------------------------------------------------------- feed-forward

def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Two-layer MLP (gelu / gelu_tanh / relu) or a gated one (swiglu / geglu: act(x W1) * (x W3),
    then W2)."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool):
        super().__init__()
        self.gated = activation in ("swiglu", "geglu")
        self.act = {"gelu": F.gelu, "geglu": F.gelu, "relu": F.relu, "swiglu": F.silu,
                    "gelu_tanh": _gelu_tanh}[activation]
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if self.gated else None
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.down.is_residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.up(x))  # (B, T, d_ff)
        if self.gated:
            h = h * self.gate(x)
        return self.down(h)


# ----------------------------------------------------------------------------- init

def init_weights(model: nn.Module, scheme: str, std: float, n_layers: int,
                 hidden_divisor: float = 1.0) -> None:
    """GPT-2 / Llama: N(0, std) everywhere, residual output projections N(0, std / sqrt(2L)).
    Xavier (the 2017 Transformer): xavier-uniform linears, embeddings N(0, d^-1/2).
    `hidden_divisor` (muP: sqrt(m)) divides the std of every linear layer but the output one."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if scheme == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                scale = math.sqrt(2 * n_layers) if getattr(module, "is_residual_out", False) else 1
                if not getattr(module, "is_output", False):
                    scale = scale * hidden_divisor
                nn.init.normal_(module.weight, mean=0.0, std=std / scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            emb_std = module.embedding_dim ** -0.5 if scheme == "xavier" else std
            nn.init.normal_(module.weight, mean=0.0, std=emb_std)
