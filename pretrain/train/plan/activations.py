"""Activation memory of one micro-batch on one rank, torch-free: the bytes autograd keeps for
backward (`held`) and the extra bytes alive at the two moments backward peaks (`loss_backward`:
the loss's gradients next to everything held; `block_backward`: the last block's backward, with
its recomputation when checkpointed).

Counted tensor by tensor from this project's code (pretrain/model/) as torch runs it — not fitted:
tests/pretrain/train/plan/test_activations.py measures every case with pretrain.memory.
TensorMemory. For a GPT-2 block in fp32 without dropout that is 16·s·b·h elements per layer
(shared/notes/plan.md): norm-1 input 1, q/kv-projection input 1, q, k, v 3, attention output 1,
norm-2 input 1, FFN input 1, GELU input 4, FFN-down input 4 — Korthikanti et al. 2022's
34·s·b·h bytes at 2 bytes per element plus two 1-byte dropout masks. Their 5·a·s²·b attention term
is zero here: SDPA's fused kernels (flash / memory-efficient / CPU flash) keep only the output and
a log-sum-exp per head and token; it comes back where torch falls back to the math kernel (CPU
with attention dropout) or a dense document mask is converted to an additive one.

Units: bytes per micro-batch. `b` = micro-batch, `s` = tokens per sequence (decoder), S / T =
source / target length (encoder-decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.model.config import ModelConfig

FP32 = 4


@dataclass(frozen=True)
class Numerics:
    """Bytes per element of each kind of tensor, by precision mode and device."""

    residual: int   # the residual stream, norm inputs (the weights' dtype)
    compute: int    # matmul outputs, attention
    autocast: bool  # every linear saves its own bf16 copy of an fp32 input
    mask: int       # a dropout mask: bool on CUDA (fused native_dropout); CPU keeps a scaled
                    # noise tensor of the input's dtype
    cuda: bool

    @classmethod
    def of(cls, precision: str, device: str = "cuda") -> Numerics:
        weight = 2 if precision in ("bf16", "fp16") else FP32
        compute = 2 if precision != "fp32" else FP32
        cuda = device == "cuda"
        return cls(weight, compute, precision == "bf16_autocast", 1 if cuda else compute, cuda)

    def linear_inputs(self, consumers: int, dtype_bytes: int) -> int:
        """Bytes per element kept as input by `consumers` linears reading one tensor: the tensor
        once, or under autocast one bf16 copy per linear when it is not bf16 already."""
        if self.autocast and dtype_bytes != 2:
            return 2 * consumers
        return dtype_bytes

    def norm_extra(self, norm: str) -> int:
        """Bytes per element a norm keeps besides its input (stats are per token, elsewhere):
        torch's RMSNorm is a composite that keeps an fp32 normalised copy (and a 16-bit one
        when the input is 16-bit); LayerNorm keeps only mean and rstd."""
        if norm != "rmsnorm":
            return 0
        return FP32 + (self.residual if self.residual == 2 else 0)

    def norm_stats(self, norm: str) -> int:
        """Bytes per token of a norm's saved statistics (LayerNorm: mean + rstd in the input's
        dtype, fp32 under autocast; RMSNorm: rstd in fp32)."""
        return FP32 if norm == "rmsnorm" else 2 * self.residual


@dataclass(frozen=True)
class Shape:
    """What one micro-batch looks like to the activation model."""

    b: int           # sequences per micro-batch
    s: int           # decoder / self-attention length
    src: int = 0     # encoder length (encoder-decoders)


def _dropout(m: ModelConfig, nx: Numerics, elements: int) -> int:
    return elements * nx.mask if m.dropout > 0 else 0


def _embedding_dropout(m: ModelConfig, nx: Numerics, tokens: int) -> int:
    """The dropout after the embeddings: its input is the residual stream's dtype (fp32 under
    autocast: embeddings are not autocast)."""
    if m.dropout <= 0:
        return 0
    return tokens * m.d_model * (1 if nx.cuda else nx.residual)


def _attention_core(m: ModelConfig, nx: Numerics, q_len: int, kv_len: int, rope: bool,
                    dense_mask: bool) -> int:
    """Per sequence: q, k, v as attention keeps them, its output and log-sum-exp; what the math
    kernel (CPU with attention dropout) or a converted dense mask adds. RoPE keeps nothing of
    its own (its muls keep only cos/sin) but its rotated q and k are new tensors: the
    q-projection output is freed, the k/v one stays (v is a view of it)."""
    d, kvd, c = m.d_model, m.kv_heads * m.head_dim, nx.compute
    out = q_len * d * c
    if math_attention(m, nx):  # the math kernel, in fp32
        qkv = (q_len * d + kv_len * 2 * kvd) * FP32  # q, k, v upcast (16-bit copies freed)
        scores = m.n_heads * q_len * kv_len * 3 * FP32  # softmax, dropout noise, dropped
        return qkv + out + scores + (q_len * kv_len * c if dense_mask else 0)
    qkv = (q_len * d + kv_len * 2 * kvd + (kv_len * kvd if rope else 0)) * c
    lse = q_len * m.n_heads * FP32
    mask = q_len * kv_len * c if dense_mask else 0  # bool -> additive in q's dtype, per layer
    # CPU flash with grouped K/V heads returns (b, h, s, hd) contiguous: the out-projection
    # keeps a transposed copy
    copy = out if m.kv_heads != m.n_heads and not nx.cuda else 0
    return qkv + out + lse + mask + copy


def math_attention(m: ModelConfig, nx: Numerics) -> bool:
    """Whether SDPA falls back to its math kernel: on CPU with attention dropout (the CPU flash
    kernel has none; CUDA's flash and memory-efficient kernels do)."""
    return m.dropout > 0 and not nx.cuda


def _ffn(m: ModelConfig, nx: Numerics, tokens: int) -> int:
    """Per sequence: the FFN's input (as its linears keep it) and hidden activations."""
    f, c = m.ffn_dim, nx.compute
    gated = m.activation in ("swiglu", "geglu")
    inputs = nx.linear_inputs(2 if gated else 1, nx.residual if nx.autocast else c)
    hidden = {"relu": 1, "gelu": 2, "gelu_tanh": 2}.get(m.activation, 4)  # gated: 4
    return tokens * (m.d_model * inputs + f * c * hidden)


def _norm(m: ModelConfig, nx: Numerics, tokens: int) -> int:
    """Per sequence: a norm's input, what it keeps besides, its statistics."""
    d = m.d_model
    return tokens * (d * (nx.residual + nx.norm_extra(m.norm)) + nx.norm_stats(m.norm))


def block_bytes(m: ModelConfig, nx: Numerics, q_len: int, mem_len: int = 0,
                causal_self: bool = True, dense_mask: bool = False) -> int:
    """What one block keeps for backward, per sequence, with nothing recomputed. `mem_len` > 0
    adds cross-attention over an encoder memory of that length."""
    d = m.d_model
    rope = m.position == "rope"
    q_in = nx.linear_inputs(2, nx.residual if nx.autocast else nx.compute)
    total = _norm(m, nx, q_len) + q_len * d * q_in
    total += _attention_core(m, nx, q_len, q_len, rope, dense_mask)
    total += _ffn(m, nx, q_len) + _norm(m, nx, q_len)
    total += 2 * _dropout(m, nx, q_len * d)  # after attention and after the FFN
    if mem_len:
        cq = nx.linear_inputs(1, nx.residual if nx.autocast else nx.compute)
        total += _norm(m, nx, q_len) + q_len * d * cq
        total += _attention_core(m, nx, q_len, mem_len, False, False)
        total += _dropout(m, nx, q_len * d)
        if nx.autocast:  # each layer's K/V projection casts the fp32 memory again
            total += mem_len * d * 2
    return total


def selective_bytes(m: ModelConfig, nx: Numerics, q_len: int, every_second: bool,
                    mem_len: int = 0) -> int:
    """What an op-level selectively checkpointed block keeps, per sequence: its input and the
    outputs of its matmuls and attention (pretrain/train/parallelize.py's policy); with
    `every_second`, matmuls 2, 4, ... of the block call are recomputed instead."""
    d, kvd, f, c = m.d_model, m.kv_heads * m.head_dim, m.ffn_dim, nx.compute
    gated = m.activation in ("swiglu", "geglu")
    math = math_attention(m, nx)  # its two batched matmuls are matmuls to the policy (fp32)
    scores = [("scores", m.n_heads * q_len * q_len * FP32), ("context", q_len * d * FP32)]
    mm = [("q", q_len * d * c), ("kv", q_len * 2 * kvd * c), *(scores if math else []),
          ("out", q_len * d * c)]
    if mem_len:
        mm += [("xq", q_len * d * c), ("xkv", mem_len * 2 * kvd * c), ("xout", q_len * d * c)]
    mm += [("up", q_len * f * c), *([("gate", q_len * f * c)] if gated else []),
           ("down", q_len * d * c)]
    kept = sum(n for i, (_, n) in enumerate(mm, start=1) if not (every_second and i % 2 == 0))
    fused = 0 if math else q_len * (d * c + m.n_heads * FP32)  # the fused kernel's outputs
    attention = fused + (q_len * (d * c + m.n_heads * FP32) if mem_len else 0)
    return q_len * d * nx.residual + kept + attention


@dataclass(frozen=True)
class LossBytes:
    held: int            # kept from the forward for backward
    backward: int        # extra at the start of backward (gradients of the logits)
    forward: int         # alive at the loss's own forward peak (held included)


def loss_bytes(m: ModelConfig, nx: Numerics, tokens: int) -> LossBytes:
    """Per micro-batch (`tokens` = b·s target positions).
    plain: the fp32 log-softmax output is kept (V per token); the forward peaks with the logits
    (and their fp32 copy when 16-bit) beside it; backward adds the gradients w.r.t. the
    log-softmax output and w.r.t. the logits (2 × fp32 V per token).
    chunked: the gradients computed in the forward are kept — d hidden (b·s·d) and d W (V·d, the
    weights' dtype); the forward peaks inside one chunk (its logits, their fp32 copy and softmax
    gradient; d W in fp32 and one chunk's contribution); backward only scales the two."""
    V, d, c, r = m.vocab_size, m.d_model, nx.compute, nx.residual
    if m.loss == "plain":
        upcast = FP32 if c != FP32 else 0
        return LossBytes(tokens * V * FP32, 2 * tokens * V * FP32,
                         tokens * V * (c + upcast + FP32))
    rows = min(m.loss_chunk_rows, tokens)
    grad_h, grad_w = tokens * d * r, V * d * r
    upcast = FP32 if c != FP32 else 0
    chunk = rows * V * (c + upcast + c) + V * d * (c + upcast) + V * d * FP32
    return LossBytes(grad_h + grad_w, grad_h + grad_w, grad_h + chunk)


@dataclass(frozen=True)
class Activations:
    """One micro-batch on one rank, bytes."""

    held: int            # everything kept for backward at the end of the forward
    loss: LossBytes
    block_backward: int  # extra while the last block runs backward (recomputation included)

    @property
    def loss_peak(self) -> int:
        return self.held + self.loss.backward

    @property
    def block_peak(self) -> int:
        return self.held - self.loss.held + self.block_backward

    @property
    def forward_peak(self) -> int:
        return self.held - self.loss.held + self.loss.forward

    @property
    def peak(self) -> int:
        return max(self.loss_peak, self.block_peak, self.forward_peak)


def _kept_per_block(m: ModelConfig, nx: Numerics, ac, index: int, full: int, q_len: int,
                    mem_len: int) -> int:
    """What block `index` of its stack keeps under the checkpointing policy `ac`, per sequence."""
    if not ac.checkpointed(index):
        return full
    if ac.mode == "selective":
        return selective_bytes(m, nx, q_len, ac.selective_mm == "every_second", mem_len)
    return q_len * m.d_model * nx.residual  # full / every_n: the block's input only


def _stack(m: ModelConfig, nx: Numerics, ac, n_layers: int, q_len: int, mem_len: int = 0,
           dense_mask: bool = False) -> tuple[int, int]:
    """(bytes the stack keeps, bytes its last block adds while running backward), per sequence:
    recomputing a checkpointed block rebuilds everything it did not keep, and its backward adds
    a gradient of the FFN's hidden width (net of the input it frees) and two of the residual
    stream's."""
    full = block_bytes(m, nx, q_len, mem_len, dense_mask=dense_mask)
    kept = [_kept_per_block(m, nx, ac, i, full, q_len, mem_len) for i in range(n_layers)]
    grads = q_len * (m.ffn_dim * nx.compute + 2 * m.d_model * nx.residual)
    return sum(kept), full - kept[-1] + grads


def _head(m: ModelConfig, nx: Numerics, tokens: int) -> int:
    """The final norm (pre-norm models) and the output projection's input, per micro-batch (the
    chunked loss keeps its gradients instead of its input)."""
    lm_in = nx.linear_inputs(1, nx.residual if nx.autocast else nx.compute) * m.d_model * tokens
    lm_in = 0 if m.loss == "chunked" else lm_in
    return lm_in + (_norm(m, nx, tokens) if m.norm_position == "pre" else 0)


def activations(m: ModelConfig, nx: Numerics, shape: Shape, ac,
                dense_doc_mask: bool = False, sequence_parallel: int = 1) -> Activations:
    """One micro-batch of `shape` on one rank under checkpointing policy `ac`
    (`train.activation_checkpointing`). `dense_doc_mask`: packed-document masking through a
    dense (b, 1, s, s) boolean mask. `sequence_parallel`: ranks one sequence is split over
    (`parallel.sequence_parallel_size`, pretrain/train/sequence.py): each rank holds s / P
    tokens of every activation, but the whole row's boolean mask (the per-layer additive copy
    of a dense mask, h/P heads of the whole row, is divided by P here: an under-count on CPU,
    where the dense kernel is the default; GPUs use flex)."""
    b, d = shape.b, m.d_model
    if m.family == "decoder":
        kept, bwd = _stack(m, nx, ac, m.n_layers, shape.s, dense_mask=dense_doc_mask)
        held = b * kept + _embedding_dropout(m, nx, b * shape.s) + _head(m, nx, b * shape.s)
        mask = b * shape.s * shape.s if dense_doc_mask else 0  # the boolean mask, once
        targets = b * shape.s
    else:
        S, T = shape.src, shape.s
        enc, _ = _stack(m, nx, ac, m.n_encoder_layers, S)
        dec, bwd = _stack(m, nx, ac, m.n_decoder_layers, T, mem_len=S)
        memory = S * d * (nx.residual + nx.norm_extra(m.norm)) + S * nx.norm_stats(m.norm)
        memory += 0 if nx.autocast else S * d * nx.compute  # enc_norm output, read by every layer
        bias = m.n_heads * (S * S + T * T) * nx.residual if m.position == "t5_relative" else 0
        held = b * (enc + dec + memory + bias) + _embedding_dropout(m, nx, b * (S + T))
        held += _head(m, nx, b * T)
        targets, mask = b * T, 0
    loss = loss_bytes(m, nx, targets)
    p = max(1, sequence_parallel)
    loss = LossBytes(loss.held // p, loss.backward // p, loss.forward // p)
    held = held // p + mask  # every rank holds the whole row's mask
    return Activations(held=held + loss.held, loss=loss, block_backward=b * bwd // p)
