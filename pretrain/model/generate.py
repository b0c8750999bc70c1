"""Decoding with a key/value cache. Decoder models: `generate` (greedy at temperature 0,
temperature and top-k sampling). Encoder-decoders: `greedy` and `beam_search` (the caches they
decode with: `DecodingState`), used by `arrowtrain translate`, `arrowtrain attention` and val_bleu.

Beam search as in "Attention is All You Need" (beam 4, length penalty alpha 0.6, stopping early
once no live hypothesis can beat the finished ones): hypotheses are ranked by log P(Y|X) / lp(Y)
with GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha."""

from __future__ import annotations

from collections.abc import Callable

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


# ---- encoder-decoders: greedy and beam search ---------------------------------------------

def length_penalty(length: int | torch.Tensor, alpha: float):
    """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _cut(row: list[int], eos_id: int) -> list[int]:
    return row[:row.index(eos_id)] if eos_id in row else row


@torch.no_grad()
def greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           max_len: int, start_id: int, eos_id: int,
           all_done: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """Greedy decoding of a batch: (B, S) source -> B lists of target ids (EOS cut off).
    `all_done(local)` lets several ranks agree when to stop (every rank must run the same
    number of steps when the parameters are sharded, ZeRO-3)."""
    B = input_ids.shape[0]
    memory = model.encode(input_ids, attention_mask)  # (B, S, C)
    state = model.decoding_state(memory, attention_mask, max_len)
    ids = torch.full((B, 1), start_id, dtype=torch.long, device=input_ids.device)
    out = torch.full((B, max_len), eos_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for t in range(max_len):
        nxt = model.decode_step(ids, state).argmax(dim=-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out[:, t], ids = nxt, nxt[:, None]
        done |= nxt == eos_id
        local = bool(done.all())
        if (all_done(local) if all_done else local):
            break
    return [_cut(row, eos_id) for row in out.tolist()]


class _Finished:
    """The best `beam` finished hypotheses of one sentence: (score, ids)."""

    def __init__(self, beam: int):
        self.beam, self.items = beam, []

    def add(self, score: float, ids: list[int]) -> None:
        self.items.append((score, ids))
        self.items.sort(key=lambda x: -x[0])
        del self.items[self.beam:]

    def worst(self) -> float:
        return self.items[-1][0] if len(self.items) == self.beam else float("-inf")


@torch.no_grad()
def beam_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                beam: int, alpha: float, max_len: int, start_id: int, eos_id: int,
                all_done: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """Beam search over a batch: (B, S) source -> B lists of target ids (EOS cut off).

    Each step expands the B*K live hypotheses, takes the 2K best continuations per sentence,
    finishes those of the first K that end in EOS (score log P / lp(|Y|), |Y| counting EOS) and
    keeps the K best others alive. A sentence is done when it holds K finished hypotheses and
    its best live one, even at the longest length (largest lp), cannot beat the worst of them.
    `all_done` as in greedy()."""
    B, K, dev = input_ids.shape[0], beam, input_ids.device
    memory = model.encode(input_ids, attention_mask)  # (B, S, C)
    state = model.decoding_state(memory.repeat_interleave(K, 0),
                                 attention_mask.repeat_interleave(K, 0), max_len)  # B*K rows
    tokens = torch.full((B * K, 1), start_id, dtype=torch.long, device=dev)  # prefixes
    logp = torch.full((B, K), float("-inf"), device=dev)
    logp[:, 0] = 0.0  # one live hypothesis per sentence at the start
    finished = [_Finished(K) for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(max_len):
        scores = torch.log_softmax(model.decode_step(tokens[:, -1:], state).float(), dim=-1)
        V = scores.shape[-1]
        cand = (logp[:, :, None] + scores.view(B, K, V)).view(B, K * V)  # (B, K*V)
        top, index = cand.topk(2 * K, dim=1)  # (B, 2K), best first
        src_beam, tok = index // V, index % V
        is_eos = (tok == eos_id) & torch.isfinite(top)
        _finish(finished, done, is_eos[:, :K], top, src_beam, tokens.view(B, K, -1), t + 1,
                alpha)
        # the K best continuations that do not end in EOS stay alive
        keep = torch.argsort(is_eos.int() * (2 * K) + torch.arange(2 * K, device=dev),
                             dim=1)[:, :K]  # (B, K)
        logp, src_beam, tok = top.gather(1, keep), src_beam.gather(1, keep), tok.gather(1, keep)
        rows = (torch.arange(B, device=dev)[:, None] * K + src_beam).view(-1)  # (B*K,)
        tokens = torch.cat([tokens[rows], tok.view(-1, 1)], dim=1)
        state.reorder(rows)
        best_alive = logp[:, 0] / length_penalty(max_len, alpha)  # an upper bound
        worst = torch.tensor([f.worst() for f in finished], device=dev)
        done |= worst >= best_alive
        local = bool(done.all())
        if (all_done(local) if all_done else local):
            break
    return [_best(f, tokens.view(B, K, -1)[b], logp[b], max_len, alpha, eos_id)
            for b, f in enumerate(finished)]


def _finish(finished, done, ends, top, src_beam, prefixes, length: int, alpha: float) -> None:
    """Record the candidates among the first K that end in EOS (sentences not yet done)."""
    for b, k in ends.nonzero().tolist():
        if not bool(done[b]):
            ids = prefixes[b, int(src_beam[b, k]), 1:].tolist()  # without the start token
            finished[b].add(float(top[b, k]) / length_penalty(length, alpha), ids)


def _best(finished: _Finished, alive: torch.Tensor, logp: torch.Tensor, max_len: int,
          alpha: float, eos_id: int) -> list[int]:
    """The best finished hypothesis, or the best live one if none finished in max_len."""
    if finished.items:
        return finished.items[0][1]
    return _cut(alive[int(logp.argmax())][1:].tolist(), eos_id)
