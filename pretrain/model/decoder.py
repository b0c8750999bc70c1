"""Decoder-only language model: GPT-2 (learned positions, LayerNorm, GELU, biases, tied
embeddings) and Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention, untied, no biases) are
two settings of the same code. Either may use muP (model.parametrization: pretrain/model/mup.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.model.blocks import Positions, Stack
from pretrain.model.config import ModelConfig
from pretrain.model.layers import (
    doc_block_mask,
    doc_causal_mask,
    init_weights,
    make_norm,
    positions_from_doc_ids,
)
from pretrain.model.loss import LMHead, lm_outputs
from pretrain.model.mup import hidden_init_divisor, output_scale


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = Positions(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.stack = Stack(cfg, cfg.n_layers)
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) \
            if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = LMHead(cfg.d_model, cfg.vocab_size, cfg.label_smoothing, cfg.chunk_rows)
        init_weights(self, cfg.init, cfg.init_std, cfg.n_layers, hidden_init_divisor(cfg))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.out_scale = output_scale(cfg)  # muP: 1/m on the final states (1.0 standard)

    def forward(self, input_ids, targets=None, doc_ids=None, caches=None, offset: int = 0,
                position_ids=None):
        """input_ids (B, T) -> {"logits": (B, T, V)}; with targets {"loss"} in training mode,
        {"loss", "logits"} in eval mode (see loss.lm_outputs). `caches`/`offset` are for
        generation: one KVCache per block, `offset` tokens already in them.

        `position_ids` ((T,) or (B, T)): input_ids are a piece of a longer row (sequence
        parallelism, pretrain/train/sequence.py) at these positions, and `doc_ids` are the whole
        row's (B, T_row): attention, made to see the whole row from outside, is causal over it
        (or masked by document)."""
        B, T = input_ids.shape
        self.positions.check(T, offset)  # a piece's row: checked against max_seq_len before
        if position_ids is not None:
            pos = position_ids
            masked = self.cfg.doc_masking and doc_ids is not None
            mask, causal = (self._doc_mask(doc_ids), False) if masked else (None, True)
        elif self.cfg.doc_masking and doc_ids is not None and caches is None:
            pos = positions_from_doc_ids(doc_ids)  # (B, T), restarts at each document
            mask, causal = self._doc_mask(doc_ids), False  # one mask for every layer
        else:
            pos = torch.arange(offset, offset + T, device=input_ids.device)  # (T,)
            mask = self._cache_mask(T, offset, input_ids.device)
            causal = offset == 0
        x = self.tok_emb(input_ids) * self.emb_scale  # (B, T, C)
        pos_emb = self.positions.additive(pos)
        if pos_emb is not None:
            x = x + pos_emb.to(x.dtype)  # the sinusoidal table stays fp32 under bf16 weights
        x = self.stack(self.drop(x), caches=caches, mask=mask, causal=causal,
                       rope=self.positions.rope(pos))
        h = self.norm_f(x)  # (B, T, C)
        if self.out_scale != 1.0:
            h = h * self.out_scale  # muP's logits h·Wᵀ/m, also through a tied head
        return lm_outputs(self.lm_head, h, targets, self.training)

    def _doc_mask(self, doc_ids: torch.Tensor):
        """A flex BlockMask or the dense (B, 1, T, T) boolean mask (cfg.doc_mask_kernel)."""
        if self.cfg.doc_kernel(doc_ids.device.type) == "flex":
            return doc_block_mask(doc_ids)
        return doc_causal_mask(doc_ids)

    @staticmethod
    def _cache_mask(T: int, offset: int, device) -> torch.Tensor | None:
        """Causal mask for T new queries after `offset` cached keys; None when there is nothing to
        hide (is_causal at offset 0, one query that may see every cached key)."""
        if offset == 0 or T == 1:
            return None
        keys = torch.arange(offset + T, device=device)
        queries = torch.arange(offset, offset + T, device=device)
        return keys[None, :] <= queries[:, None]  # (T, offset + T)
