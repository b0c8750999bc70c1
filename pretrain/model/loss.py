"""The output projection and the language-modelling loss.

Two ways to compute the mean cross-entropy of `hidden @ W^T` (model.loss):
  plain    logits (B·T, V) in the model's dtype, then cross_entropy on an fp32 copy — autograd
           keeps an fp32 (B·T, V) tensor until backward.
  chunked  rows in chunks of model.loss_chunk_rows: each chunk's logits, loss and gradients
           (d hidden, d W) are computed in the forward and the chunk's logits are freed at once,
           so no (B·T, V) tensor ever exists; backward only scales the stored gradients. The same
           FLOPs as plain (no recomputation). On a GPU the per-chunk step is compiled.
Both take label smoothing and ignore targets of -100, as F.cross_entropy does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0):
    """logits (B, T, V), targets (B, T) -> mean over targets != -100, computed in float32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                           ignore_index=IGNORE, label_smoothing=label_smoothing)


def _chunk(h, weight, t, smoothing: float, scale, need_grad: bool):
    """One chunk: h (n, C), t (n,) -> (summed loss, d loss/d logits (n, V) or None). `scale` is
    1 / (targets kept in the whole batch), so the gradient is that of the mean."""
    z = h @ weight.t()  # (n, V) in the compute dtype (autocast applies)
    dtype, z = z.dtype, z.float()
    lse = torch.logsumexp(z, dim=-1)  # (n,)
    valid = t != IGNORE
    safe = torch.where(valid, t, 0)[:, None]  # (n, 1)
    nll = lse - z.gather(1, safe).squeeze(1)  # (n,)
    if smoothing:  # (1 - e) * nll + e * mean over classes of -log p
        nll = (1 - smoothing) * nll + smoothing * (lse - z.mean(dim=-1))
    loss = torch.where(valid, nll, 0.0).sum()
    if not need_grad:
        return loss, None
    g = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits (n, V)
    if smoothing:
        g.sub_(smoothing / g.shape[1])
    g.scatter_add_(1, safe, torch.full_like(safe, smoothing - 1.0, dtype=g.dtype))
    g.mul_((valid * scale)[:, None])
    return loss, g.to(dtype)


_COMPILED: dict[str, object] = {}


def _chunk_fn(device: torch.device):
    if device.type != "cuda" or torch.compiler.is_compiling():
        return _chunk  # on CPU, or traced as part of an already compiled model
    if "chunk" not in _COMPILED:
        _COMPILED["chunk"] = torch.compile(_chunk, dynamic=False)
    return _COMPILED["chunk"]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, smoothing: float, chunk_rows: int,
                need_grad: bool):
        scale = 1.0 / (targets != IGNORE).sum()  # inf -> nan loss when nothing is kept, as F
        step = _chunk_fn(hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad else None  # (N, C)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None  # (V, C)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_rows):
            h, t = hidden[start:start + chunk_rows], targets[start:start + chunk_rows]
            loss, g = step(h, weight, t, smoothing, scale, need_grad)
            total += loss
            if need_grad:
                grad_h[start:start + chunk_rows] = g @ weight  # (n, C)
                grad_w += (g.t() @ h).float()  # (V, C)
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype),
                None, None, None, None)


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                                 targets: torch.Tensor, label_smoothing: float = 0.0,
                                 chunk_rows: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of hidden (N, C) @ weight (V, C)^T against targets (N,), never holding
    more than chunk_rows x V logits."""
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, label_smoothing, chunk_rows,
                                            need_grad)


class LMHead(nn.Linear):
    """Output projection (no bias). `head(h)`: logits (B, T, V). `head(h, targets)`: the mean
    loss only — its logits die inside (plain) or never exist whole (chunked). Called as a
    module either way, so hooks on it (ZeRO-3 gathering the weight) run before the weight is
    used."""

    is_output = True  # muP: an output layer, not a hidden matrix (pretrain/model/mup.py)

    def __init__(self, d_model: int, vocab_size: int, label_smoothing: float = 0.0,
                 chunk_rows: int | None = None):
        super().__init__(d_model, vocab_size, bias=False)
        self.label_smoothing, self.chunk_rows = label_smoothing, chunk_rows

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            return super().forward(h)  # (B, T, V)
        if self.chunk_rows:
            return chunked_linear_cross_entropy(h.flatten(0, 1), self.weight, targets.flatten(),
                                                self.label_smoothing, self.chunk_rows)
        return cross_entropy(super().forward(h), targets, self.label_smoothing)


def lm_outputs(head: LMHead, h: torch.Tensor, targets: torch.Tensor | None,
               training: bool) -> dict[str, torch.Tensor]:
    """What the models return from final hidden states h (B, T, C) (docs/design.md §9-10):
    {"logits"} without targets; {"loss"} in training mode (no (B, T, V) tensor is kept for the
    caller); {"loss", "logits"} in eval mode, where evaluation reads the logits too."""
    if targets is None:
        return {"logits": head(h)}
    if training:
        return {"loss": head(h, targets)}
    logits = head(h)  # (B, T, V)
    return {"loss": cross_entropy(logits, targets, head.label_smoothing), "logits": logits}
