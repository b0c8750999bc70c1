"""Sampling from decoder models with a key/value cache: greedy (temperature 0), temperature and
top-k; and the caches an encoder-decoder decodes with (pretrain.translate: greedy and beam
search)."""

from __future__ import annotations

import torch
from torch import nn


class KVCache:
    """Keys and values of one attention layer, preallocated to (B, kv_heads, max_len, hd)."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, like: torch.Tensor):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, kv, T, hd); return all keys and values so far (B, kv, length, hd)."""
        T = k.shape[2]
        self.k[:, :, self.length:self.length + T] = k
        self.v[:, :, self.length:self.length + T] = v
        self.length += T
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (B,) of the batch, in that order (beam search)."""
        self.k, self.v = self.k[rows], self.v[rows]


class MemoryKV:
    """Cross-attention keys and values of the encoder's memory for one decoder layer: projected
    on the first decoding step, reused on every later one."""

    def __init__(self):
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, project) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv is None:
            self.kv = project()
        return self.kv


class DecodingState:
    """What an encoder-decoder needs to decode one token at a time: the memory and its mask,
    one KVCache (self-attention) and one MemoryKV (cross-attention) per decoder layer, and how
    many target positions the caches hold."""

    def __init__(self, memory: torch.Tensor, memory_mask: torch.Tensor | None, n_layers: int,
                 n_kv_heads: int, max_len: int, head_dim: int):
        self.memory, self.memory_mask = memory, memory_mask  # (B, S, C), (B, S) bool or None
        self.self_kv = [KVCache(memory.shape[0], n_kv_heads, max_len, head_dim, memory)
                        for _ in range(n_layers)]
        self.cross_kv = [MemoryKV() for _ in range(n_layers)]
        self.offset = 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i continues the hypothesis of row rows[i]. rows only moves rows
        between the beams of one source sentence, whose memory (and cross K/V) are the same,
        so only the self-attention caches move."""
        for cache in self.self_kv:
            cache.reorder(rows)


def _new_caches(model: nn.Module, batch: int) -> list[KVCache]:
    cfg = model.cfg
    like = next(model.parameters())
    return [KVCache(batch, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim, like)
            for _ in range(cfg.n_layers)]


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B, 1) next tokens."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, eos_id: int | None = None) -> torch.Tensor:
    """Extend idx (B, T) by up to max_new_tokens -> (B, T + n). temperature 0 = greedy. Stops
    early once every row has produced eos_id (finished rows are padded with eos_id). Beyond
    max_seq_len the context is cropped to the last max_seq_len tokens (recomputed, no cache)."""
    if model.cfg.family != "decoder":
        raise ValueError("generate() works with decoder models only")
    was_training = model.training
    model.eval()
    max_len = model.cfg.max_seq_len
    caches, done = None, torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if idx.shape[1] >= max_len:  # cache full: slide the window
            logits = model(idx[:, -max_len:])["logits"]
        elif caches is None:  # prefill
            caches = _new_caches(model, idx.shape[0])
            logits = model(idx, caches=caches)["logits"]
        else:
            logits = model(idx[:, -1:], caches=caches, offset=caches[0].length)["logits"]
        nxt = _pick(logits[:, -1], temperature, top_k)  # (B, 1)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        idx = torch.cat([idx, nxt], dim=1)
        if eos_id is not None and bool(done.all()):
            break
    model.train(was_training)
    return idx
