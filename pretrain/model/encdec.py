"""Encoder-decoder Transformer: a bidirectional encoder, a causal decoder with cross-attention,
one token embedding shared by source and target (and, with tie_embeddings, by the output
projection). The 2017 paper (post-LayerNorm, sinusoidal, ReLU, dropout and label smoothing 0.1)
and T5 v1.1 (pre-RMSNorm, relative position bias, gated-GELU FFN, untied output) are settings of
this code.

With `position: t5_relative` each stack adds T5's bucketed relative position bias (one table per
stack, shared by its layers) to its self-attention scores: SDPA then gets an additive float
mask (bias, -inf where a key is padding or in the future) instead of the boolean mask or the
is_causal path. Decoding (pretrain.model.generate) goes one token at a time: `decoding_state` holds
the memory and the per-layer caches, `decode_step` feeds the next tokens."""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.model.blocks import Positions, Stack
from pretrain.model.config import ModelConfig
from pretrain.model.generate import DecodingState
from pretrain.model.layers import init_weights, make_norm
from pretrain.model.loss import LMHead, lm_outputs


def additive_mask(bias: torch.Tensor, allowed: torch.Tensor | None,
                  dtype: torch.dtype) -> torch.Tensor:
    """bias (1, h, T, S) float32 + -inf where `allowed` (bool, broadcastable, True = attend)
    is False -> an SDPA float mask in the activations' dtype."""
    if allowed is not None:
        bias = bias.masked_fill(~allowed, float("-inf"))
    return bias.to(dtype)


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)  # source and target
        self.enc_positions = Positions(cfg, bidirectional=True)
        self.dec_positions = Positions(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Stack(cfg, cfg.n_encoder_layers)
        self.decoder = Stack(cfg, cfg.n_decoder_layers, cross=True)
        pre = cfg.norm_position == "pre"
        self.enc_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if pre \
            else nn.Identity()
        self.dec_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if pre \
            else nn.Identity()
        self.lm_head = LMHead(cfg.d_model, cfg.vocab_size, cfg.label_smoothing, cfg.chunk_rows)
        init_weights(self, cfg.init, cfg.init_std, cfg.total_layers)
        for positions in (self.enc_positions, self.dec_positions):
            if positions.relative is not None:  # T5 (Mesh TF): N(0, d_model^-0.5)
                nn.init.normal_(positions.relative.weight, std=cfg.d_model ** -0.5)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0

    def _embed(self, ids: torch.Tensor, positions: Positions,
               offset: int = 0) -> tuple[torch.Tensor, tuple]:
        T = ids.shape[1]
        positions.check(T, offset)
        pos = torch.arange(offset, offset + T, device=ids.device)
        x = self.tok_emb(ids) * self.emb_scale  # (B, T, C)
        pos_emb = positions.additive(pos)
        if pos_emb is not None:
            x = x + pos_emb.to(x.dtype)  # the sinusoidal table stays fp32 under bf16 weights
        return self.drop(x), positions.rope(pos)

    def encode(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(B, S) source -> (B, S, C) memory. attention_mask (B, S) bool, True = real token."""
        x, rope = self._embed(input_ids, self.enc_positions)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        S = input_ids.shape[1]
        bias = self.enc_positions.bias(S, S, device=input_ids.device)  # (1, h, S, S) or None
        if bias is not None:
            mask = additive_mask(bias, mask, x.dtype)  # (B, h, S, S)
        return self.enc_norm(self.encoder(x, mask=mask, rope=rope))  # (B, S, C)

    def decoder_states(self, decoder_input_ids, memory, attention_mask=None) -> torch.Tensor:
        """(B, T) target prefix + (B, S, C) memory -> (B, T, C) final decoder states."""
        x, rope = self._embed(decoder_input_ids, self.dec_positions)
        memory_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        T = decoder_input_ids.shape[1]
        bias = self.dec_positions.bias(T, T, device=x.device)
        mask, causal = None, True  # the is_causal fast path
        if bias is not None:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
            mask, causal = additive_mask(bias, future, x.dtype), False  # (1, h, T, T)
        x = self.decoder(x, mask=mask, causal=causal, rope=rope, memory=memory,
                         memory_mask=memory_mask)
        return self.dec_norm(x)  # (B, T, C)

    # ---- decoding one token at a time (pretrain.model.generate) ------------------------

    def decoding_state(self, memory: torch.Tensor, attention_mask: torch.Tensor | None,
                       max_len: int) -> DecodingState:
        """Caches for decoding up to max_len target positions against memory (B, S, C)."""
        cfg = self.cfg
        return DecodingState(memory, attention_mask, cfg.n_decoder_layers, cfg.kv_heads,
                             max_len, cfg.head_dim)

    def decode_step(self, ids: torch.Tensor, state: DecodingState) -> torch.Tensor:
        """The next T tokens ids (B, T) after the state.offset already decoded -> the logits of
        the last one (B, V). Self-attention keys and values are appended to the caches; the
        cross-attention ones are projected from the memory on the first step only."""
        T, offset = ids.shape[1], state.offset
        x, rope = self._embed(ids, self.dec_positions, offset)  # (B, T, C)
        keys = torch.arange(offset + T, device=ids.device)
        allowed = keys[None, :] < (torch.arange(T, device=ids.device)[:, None] + offset + 1)
        bias = self.dec_positions.bias(T, offset + T, offset, device=ids.device)
        if bias is not None:
            mask = additive_mask(bias, allowed, x.dtype)  # (1, h, T, offset + T)
        else:
            mask = None if T == 1 else allowed  # one new query may see every cached key
        memory_mask = None if state.memory_mask is None else \
            state.memory_mask[:, None, None, :].bool()
        x = self.decoder(x, caches=state.self_kv, cross_caches=state.cross_kv, mask=mask,
                         causal=False, rope=rope, memory=state.memory, memory_mask=memory_mask)
        state.offset += T
        return self.lm_head(self.dec_norm(x[:, -1]))  # (B, V)

    def decode(self, decoder_input_ids, memory, attention_mask=None) -> torch.Tensor:
        """(B, T) target prefix + (B, S, C) memory -> (B, T, V) logits."""
        return self.lm_head(self.decoder_states(decoder_input_ids, memory, attention_mask))

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, targets=None):
        """-> {"logits": (B, T, V)}; with targets {"loss"} in training mode, {"loss", "logits"}
        in eval mode (see loss.lm_outputs)."""
        memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        h = self.decoder_states(decoder_input_ids, memory, attention_mask)  # (B, T, C)
        return lm_outputs(self.lm_head, h, targets, self.training)
