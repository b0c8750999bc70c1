"""The peak of one training step on one rank: model states (states.py) and activations
(activations.py) added up at each moment that can peak, itemised at the highest.

Moments of a step (the order DeepSpeed runs them):
  forward   the loss's own forward (its logits beside everything kept so far)
  loss      the start of backward: everything kept, plus the loss's gradients
  backward  the last block's backward: its recomputation, the first parameter gradients and
            ZeRO-1/2's reduce bucket (allocated at the first gradient)
  reduce    ZeRO-0's end of backward: every gradient plus its flattened all-reduce copy (made
            on one rank too)
  step      the optimizer step: gradients and their fp32 copy, no activations
With gradient accumulation, micro-batches after the first start their forward with the
gradients of the earlier ones (ZeRO-0: all of them; ZeRO-1/2: the partition; ZeRO-3 always
holds its partition buffer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pretrain.model.config import ModelConfig
from pretrain.train.plan.activations import Activations
from pretrain.train.plan.states import (
    ALLREDUCE_BUCKET,
    StateBytes,
    ZeroKnobs,
    grad_partition_elements,
    partition,
    zero3_gathered,
)

PARTS = ("parameters", "gradients", "optimizer_states", "activations", "deepspeed_buffers")


@dataclass(frozen=True)
class Parts:
    """Bytes per rank at one moment of the step."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    deepspeed_buffers: int
    moment: str = ""

    @property
    def allocated(self) -> int:
        return sum(getattr(self, p) for p in PARTS)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k in PARTS}


def autocast_weight_copies(shapes: dict[str, tuple[int, ...]], m: ModelConfig, ac) -> int:
    """bf16_autocast: the bf16 copy of every linear weight autocast caches during the forward
    and matmul backward keeps — those of the blocks that are not checkpointed (a checkpointed
    block casts again when it recomputes) and of the output projection."""
    total = 0
    for name, shape in shapes.items():
        if len(shape) != 2 or name.startswith(("tok_emb", "positions", "enc_positions",
                                               "dec_positions")):
            continue
        parts = name.split(".")
        if parts[1:2] == ["blocks"] and ac.checkpointed(int(parts[2])):
            continue
        total += math.prod(shape)
    if m.tie_embeddings:  # the output projection is the token embedding
        total += m.vocab_size * m.d_model
    return 2 * total


@dataclass(frozen=True)
class StepInputs:
    """Everything the peak depends on besides the activations."""

    shapes: dict[str, tuple[int, ...]]
    precision: str
    knobs: ZeroKnobs
    ranks: int            # data-parallel ranks ZeRO partitions over
    grad_accum: int       # micro-batches per step
    autocast_copies: int  # bytes (autocast_weight_copies), 0 otherwise


def _gathered(inp: StepInputs, sb: StateBytes) -> tuple[int, int]:
    """ZeRO-3: (elements gathered in the forward/backward, elements kept whole always)."""
    if inp.knobs.stage != 3 or inp.ranks == 1:  # one rank: the partition is the parameter
        return 0, 0
    g = zero3_gathered(inp.shapes, inp.knobs)
    return g.persistent + max(g.kept, g.largest), g.persistent


def moments(inp: StepInputs, acts: Activations, head_elements: int) -> list[Parts]:
    """The step's moments (module docstring), itemised. `head_elements`: the output
    projection's weight, the first gradient backward makes."""
    k, N = inp.knobs, inp.ranks
    sb = StateBytes.of(inp.precision, k.stage, k.grad_accum_fp32)
    psi = sum(math.prod(s) for s in inp.shapes.values())
    part = partition(psi, N)
    gathered, persistent = _gathered(inp, sb)
    weights = psi * sb.weights if k.stage < 3 else part * sb.weights
    params_fwd = weights + gathered * sb.weights + inp.autocast_copies
    params_step = weights + persistent * sb.weights
    opt = 0 if k.offload else (psi if k.stage == 0 else part) * sb.optimizer
    held_grads = {0: psi, 1: grad_partition_elements(inp.shapes, N),
                  2: grad_partition_elements(inp.shapes, N), 3: part}[k.stage] * sb.grads
    held_grads = 0 if (k.offload and k.stage > 0) else held_grads
    copy = 0 if k.offload else (psi if k.stage == 0 else part) * sb.grad_copy
    bucket = k.reduce_bucket * sb.grads * (2 if k.overlap_comm else 1) \
        if k.contiguous_gradients else 0
    z3_bucket = bucket if k.stage == 3 else 0
    between = held_grads if (inp.grad_accum > 1 or k.stage == 3) else 0
    # ZeRO-1/2 allocate the partition at the first reduction: inside backward when a bucket
    # fills before the gradients end, else at its end
    early = k.stage in (1, 2) and k.reduce_bucket < psi
    in_backward = held_grads if early else between
    # the first gradient (the output projection's): ZeRO >= 1 copies it into the bucket
    first = head_elements * sb.grads if k.stage == 0 else 0
    out = [Parts(params_fwd, between, opt, acts.forward_peak, z3_bucket, "forward"),
           Parts(params_fwd, between, opt, acts.loss_peak, z3_bucket, "loss"),
           Parts(params_fwd, in_backward + first, opt, acts.block_peak,
                 bucket if k.stage > 0 else 0, "backward"),
           Parts(params_step, held_grads + copy, opt, 0, z3_bucket, "step")]
    if k.stage == 0:  # the all-reduce flattens the gradients on one rank too
        flat = min(psi, ALLREDUCE_BUCKET) * sb.grads
        out.append(Parts(params_step, held_grads, opt, 0, flat, "reduce"))
    return out


def peak(inp: StepInputs, acts: Activations, head_elements: int) -> Parts:
    return max(moments(inp, acts, head_elements), key=lambda p: p.allocated)
