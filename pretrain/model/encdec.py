"""Encoder-decoder Transformer: a bidirectional encoder, a causal decoder with cross-attention,
one token embedding shared by source and target (and, with tie_embeddings, by the output
projection). The 2017 paper (post-LayerNorm, sinusoidal, ReLU, dropout and label smoothing 0.1)
and a T5-like modern variant (pre-RMSNorm, RoPE, gated FFN) are two settings of this code."""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.model.blocks import Positions, Stack
from pretrain.model.config import ModelConfig
from pretrain.model.layers import init_weights, make_norm
from pretrain.model.loss import LMHead, lm_outputs


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)  # source and target
        self.enc_positions, self.dec_positions = Positions(cfg), Positions(cfg)
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
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0

    def _embed(self, ids: torch.Tensor, positions: Positions) -> tuple[torch.Tensor, tuple]:
        T = ids.shape[1]
        positions.check(T)
        pos = torch.arange(T, device=ids.device)
        x = self.tok_emb(ids) * self.emb_scale  # (B, T, C)
        pos_emb = positions.additive(pos)
        if pos_emb is not None:
            x = x + pos_emb
        return self.drop(x), positions.rope(pos)

    def encode(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(B, S) source -> (B, S, C) memory. attention_mask (B, S) bool, True = real token."""
        x, rope = self._embed(input_ids, self.enc_positions)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        return self.enc_norm(self.encoder(x, mask=mask, rope=rope))  # (B, S, C)

    def decoder_states(self, decoder_input_ids, memory, attention_mask=None) -> torch.Tensor:
        """(B, T) target prefix + (B, S, C) memory -> (B, T, C) final decoder states."""
        x, rope = self._embed(decoder_input_ids, self.dec_positions)
        memory_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        x = self.decoder(x, causal=True, rope=rope, memory=memory, memory_mask=memory_mask)
        return self.dec_norm(x)  # (B, T, C)

    def decode(self, decoder_input_ids, memory, attention_mask=None) -> torch.Tensor:
        """(B, T) target prefix + (B, S, C) memory -> (B, T, V) logits."""
        return self.lm_head(self.decoder_states(decoder_input_ids, memory, attention_mask))

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, targets=None):
        """-> {"logits": (B, T, V)}; with targets {"loss"} in training mode, {"loss", "logits"}
        in eval mode (see loss.lm_outputs)."""
        memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        h = self.decoder_states(decoder_input_ids, memory, attention_mask)  # (B, T, C)
        return lm_outputs(self.lm_head, h, targets, self.training)
