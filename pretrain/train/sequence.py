"""Sequence parallelism (DeepSpeed-Ulysses; `parallel.sequence_parallel_size: P`), applied to the
plain decoder from outside, as activation checkpointing is (pretrain/train/parallelize.py).

Layout: ranks form sequence groups of P contiguous ranks (group g = ranks gP .. gP+P-1); the
group's index is its data-parallel rank (rank // P, world / P of them), on which the data order
and resume are keyed (every rank of a group reads the same micro-batch). Rank i of a group
keeps tokens [i·T/P, (i+1)·T/P) of every row, cut after the loader shifted the labels (piece
i's last target is piece i+1's first input), with the positions of that piece (learned and
RoPE alike; with document masking, the positions and the mask come from the whole row's
document ids). Inside each attention layer an all-to-all trades the sequence split for a head
split: (B, h, T/P, hd) with every head -> (B, h/P, T, hd) with the whole row; attention runs
over the whole row (causal, or the document mask) and a second all-to-all trades back. Heads
and key/value heads must divide by P (grouped-query heads stay with their queries).

Gradients: DeepSpeed is not told about the sequence groups (no `mpu`, no
`sequence_parallel_size` in its JSON). It sees `world` data-parallel ranks and, at every ZeRO
stage 0-3 alike, averages gradients over all of them; checkpoints are those of a `world`-rank
data-parallel run, so a resume at another P is a change of world size (pretrain/train/
reshard.py) or none. Told about the groups, DeepSpeed's ZeRO-1/2 divide by world / P but
ZeRO-3 by world (the trap in docs/training.md#long-context). Each rank backpropagates
P · (its tokens' share of the micro-batch's mean loss): summed over a group that is P times the
micro-batch's mean, and the average over world ranks is then the mean over data-parallel ranks
that one rank per row would give. The logged loss is that average too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pretrain.model.layers import Attention, positions_from_doc_ids
from pretrain.model.loss import IGNORE


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place: `size` ranks per row, `index` within its group, the data-parallel
    rank and size (the loader's rank and world), the group (None when size is 1)."""

    size: int
    index: int
    dp_rank: int
    dp_world: int
    group: Any = None

    @classmethod
    def create(cls, rank: int, world: int, size: int) -> SequenceParallel:
        """Every rank calls this (new_group is collective) after the process group started."""
        if world % size:
            raise ValueError(f"parallel.sequence_parallel_size ({size}) does not divide the "
                             f"world size ({world})")
        group = None
        if size > 1:
            for g in range(world // size):  # every rank creates every group, in order
                made = dist.new_group(list(range(g * size, (g + 1) * size)))
                if g == rank // size:
                    group = made
        return cls(size, rank % size, rank // size, world // size, group)

    def piece(self, batch: dict[str, torch.Tensor],
              doc_masking: bool) -> tuple[dict[str, torch.Tensor], float]:
        """A clm micro-batch (input_ids, targets, doc_ids: (B, T)) -> (this rank's piece:
        input_ids and targets (B, T/P), position_ids (T/P,) or (B, T/P), doc_ids (B, T) of the
        whole row when masking by document; the loss weight P · n_rank / n_row, n counting
        targets that are not ignored). On the host batch: no device sync."""
        unknown = set(batch) - {"input_ids", "targets", "doc_ids"}
        if unknown:
            raise ValueError(f"sequence parallelism cuts clm batches; got keys {sorted(unknown)}")
        T = batch["input_ids"].shape[1]
        t = T // self.size
        cut = slice(self.index * t, (self.index + 1) * t)
        out = {"input_ids": batch["input_ids"][:, cut].contiguous(),
               "targets": batch["targets"][:, cut].contiguous()}
        if doc_masking:
            out["doc_ids"] = batch["doc_ids"]  # (B, T): the mask covers the whole row
            out["position_ids"] = positions_from_doc_ids(batch["doc_ids"])[:, cut].contiguous()
        else:
            out["position_ids"] = torch.arange(cut.start, cut.stop)  # (T/P,)
        kept_row = int((batch["targets"] != IGNORE).sum())
        kept_here = int((out["targets"] != IGNORE).sum())
        return out, self.size * kept_here / max(1, kept_row)


class _AllToAll(torch.autograd.Function):
    """x (P, ...): slice j goes to rank j of the group, which stores it at this rank's index.
    The backward is the same exchange of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.group), None


def _exchange(x: torch.Tensor, group) -> torch.Tensor:
    """all_to_all_single reads and writes memory in row-major order: both buffers contiguous
    (a gradient often arrives as a permuted view, and empty_like would copy its strides)."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_heads(x: torch.Tensor, group, P: int) -> torch.Tensor:
    """(B, n, T/P, hd): every head, this rank's piece -> (B, n/P, T, hd): this rank's heads,
    the whole row."""
    B, n, t, hd = x.shape
    send = x.reshape(B, P, n // P, t, hd).transpose(0, 1)  # (P, B, n/P, t, hd): heads j -> j
    recv = _AllToAll.apply(send.contiguous(), group)  # slot i: rank i's piece of the row
    return recv.permute(1, 2, 0, 3, 4).reshape(B, n // P, P * t, hd)


def heads_to_seq(y: torch.Tensor, group, P: int) -> torch.Tensor:
    """(B, n/P, T, hd) -> (B, n, T/P, hd): the inverse of seq_to_heads."""
    B, m, T, hd = y.shape
    send = y.reshape(B, m, P, T // P, hd).permute(2, 0, 1, 3, 4)  # (P, B, m, t, hd): piece j -> j
    recv = _AllToAll.apply(send.contiguous(), group)  # slot i: rank i's heads of my piece
    return recv.transpose(0, 1).reshape(B, P * m, T // P, hd)


class _UlyssesAttention:
    """Mixed into an Attention's class: its core (SDPA / flex over q (B, h, t, hd) and k, v
    (B, kv, t, hd)) runs on the whole row with h/P and kv/P heads between two all-to-alls."""

    _sp_group: Any = None
    _sp_size: int = 1

    def _core(self, q, k, v, mask, causal):
        group, P = self._sp_group, self._sp_size
        q, k, v = (seq_to_heads(x, group, P) for x in (q, k, v))  # (B, n/P, T, hd)
        y = super()._core(q, k, v, mask, causal)  # (B, h/P, T, hd)
        return heads_to_seq(y, group, P)  # (B, h, T/P, hd)


_ULYSSES_CLASSES: dict[type, type] = {}


def apply_sequence_parallel(model: nn.Module, sp: SequenceParallel) -> int:
    """Make every attention layer of `model` Ulysses attention over `sp`'s group, in place (the
    class changes, parameter names do not); returns how many. Nothing to do at size 1."""
    if sp.size == 1:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            cls = type(module)
            if not issubclass(cls, _UlyssesAttention):
                if cls not in _ULYSSES_CLASSES:
                    _ULYSSES_CLASSES[cls] = type(f"Ulysses{cls.__name__}",
                                                 (_UlyssesAttention, cls), {})
                module.__class__ = _ULYSSES_CLASSES[cls]
            module._sp_group, module._sp_size = sp.group, sp.size
            count += 1
    return count
