"""Model states per rank — weights, gradients, optimizer states — and DeepSpeed's buffers, by
precision mode, ZeRO stage (0-3) and optimizer offload. Torch-free.

The ZeRO paper (Rajbhandari et al. 2020, §5) counts Ψ parameters on N data-parallel ranks with
2-byte weights and gradients and K = 12 bytes of optimizer state (fp32 master weights, Adam's
two moments): ZeRO-0 (2+2+K)Ψ, ZeRO-1 4Ψ + KΨ/N, ZeRO-2 2Ψ + (2+K)Ψ/N, ZeRO-3 (4+K)Ψ/N.
`model_state_bytes` is that formula with the bytes per parameter as arguments (`StateBytes`);
`StateBytes.paper()` gives the paper's numbers exactly, and `StateBytes.deepspeed_estimator(3)`
DeepSpeed's own `estimate_zero{2,3}_model_states_mem_needs` (tests/pretrain/train/plan/).

What DeepSpeed 0.19.8 really holds, read from its source (runtime/zero/stage_1_and_2.py,
stage3.py, fp16/unfused_optimizer.py) and measured on CPU with pretrain.memory.TensorMemory:
- ZeRO-1 and -2 run the same code: both keep a gradient partition (the whole parameters that
  overlap the rank's partition, in the weights' dtype) from the first reduction to the step;
  every stage >= 1 clones an fp32 master partition — in fp32 training too — and the step makes
  an fp32 copy of the gradient partition;
- ZeRO-0 in bf16/fp16 wraps torch AdamW in the unfused optimizer: fp32 master weights and fp32
  copies of the gradients at the step;
- ZeRO-3 allocates its gradient partition buffer and one reduce bucket at start; parameters
  under `stage3_param_persistence_threshold` elements (default 1e5) are never partitioned away
  (kept whole on every rank next to their partition); others are gathered for use and released
  only when their next use is more than `stage3_max_reuse_distance` elements (default 1e9) away
  — so at the end of the forward a model under ~5e8 parameters holds all of them gathered;
- ZeRO-1/2 allocate the reduce bucket (`reduce_bucket_size` elements, two with overlap_comm) at
  the first gradient of each backward; ZeRO-0 flattens the gradients into all-reduce buffers of
  up to 5e8 elements at the end of backward.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Any

FP32 = 4

# DeepSpeed 0.19.8's defaults for the knobs arrowtrain leaves to `deepspeed.extra`.
DS_DEFAULTS = {"stage3_param_persistence_threshold": 100_000,
               "stage3_max_reuse_distance": 1_000_000_000,
               "stage3_prefetch_bucket_size": 50_000_000}
ALLREDUCE_BUCKET = 500_000_000  # engine.allreduce_gradients' buffer (ZeRO-0), elements


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of each model state."""

    weights: int      # the training copy (replicated below ZeRO-3)
    grads: int        # gradients (replicated below ZeRO-2)
    master: int       # fp32 master weights (partitioned from ZeRO-1)
    moments: int      # Adam's m and v (partitioned from ZeRO-1)
    grad_copy: int    # an fp32 copy of the gradients made at the step (partitioned from ZeRO-1)

    @property
    def optimizer(self) -> int:
        return self.master + self.moments

    @classmethod
    def paper(cls) -> StateBytes:
        """The ZeRO paper's mixed-precision Adam: 2 + 2 + K (K = 12)."""
        return cls(weights=2, grads=2, master=4, moments=8, grad_copy=0)

    @classmethod
    def deepspeed_estimator(cls, stage: int) -> StateBytes:
        """What DeepSpeed's estimators assume (their comments): ZeRO-2 '2 = params_16bit, 18 =
        2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit'; ZeRO-3 18
        per parameter (16-bit weights, fp32 gradients, master, moments) + 4 × the largest layer
        (its gathered 16-bit weights and gradients)."""
        if stage == 3:
            return cls(weights=2, grads=4, master=4, moments=8, grad_copy=0)
        return cls(weights=2, grads=2, master=4, moments=8, grad_copy=4)

    @classmethod
    def of(cls, precision: str, stage: int, grad_accum_fp32: bool = False) -> StateBytes:
        """What DeepSpeed 0.19.8 keeps in arrowtrain's precision modes (config.Precision):
        fp32 and bf16_autocast train fp32 weights; bf16 / fp16 keep 16-bit weights and
        gradients and an fp32 master copy (ZeRO-0 too, through the unfused wrapper)."""
        weights = 2 if precision in ("bf16", "fp16") else FP32
        grads = FP32 if grad_accum_fp32 else weights
        fp32_training = weights == FP32
        master = 0 if (stage == 0 and fp32_training) else FP32
        copy = 0 if (stage == 0 and fp32_training) else FP32
        return cls(weights=weights, grads=grads, master=master, moments=8, grad_copy=copy)


def partition(n: int, ranks: int) -> int:
    return math.ceil(n / ranks)


def model_state_bytes(n_params: int, ranks: int, stage: int, sb: StateBytes,
                      gathered: int = 0, offload: bool = False) -> dict[str, int]:
    """Parameters, gradients and optimizer states per rank with everything alive at once (the
    formula form). `gathered`: ZeRO-3's working set of full parameters (elements), with their
    full gradients before the reduce-scatter, both in the weights' dtype. `offload`: ZeRO-Offload
    keeps the optimizer states, the fp32 gradient copy and (stage >= 1) the gradient partition
    in CPU memory."""
    part = partition(n_params, ranks)
    weights = n_params * sb.weights if stage < 3 else part * sb.weights
    grads = n_params * sb.grads if stage < 2 else part * sb.grads
    sharded = n_params if stage == 0 else part
    if offload and stage >= 1:
        grads, sharded = 0, 0
    return {"parameters": weights + gathered * sb.weights,
            "gradients": grads + sharded * sb.grad_copy + gathered * sb.weights,
            "optimizer_states": sharded * sb.optimizer}


# ----------------------------------------------------------------------------- the real layout

@dataclass(frozen=True)
class ZeroKnobs:
    """DeepSpeed settings that change memory: arrowtrain's `deepspeed` section plus the
    `deepspeed.extra` entries it passes through (DeepSpeed's defaults otherwise)."""

    stage: int
    offload: bool
    reduce_bucket: int
    overlap_comm: bool
    contiguous_gradients: bool
    persistence_threshold: int
    max_reuse_distance: int
    prefetch_bucket: int
    grad_accum_fp32: bool

    @classmethod
    def of(cls, ds: Any) -> ZeroKnobs:
        zero = dict(ds.extra.get("zero_optimization") or {})
        accum = str((ds.extra.get("data_types") or {}).get("grad_accum_dtype") or "")
        get = lambda k: int(zero.get(k, DS_DEFAULTS[k]))  # noqa: E731
        return cls(stage=ds.zero_stage, offload=ds.offload_optimizer,
                   reduce_bucket=int(zero.get("reduce_bucket_size", ds.reduce_bucket_size)),
                   overlap_comm=bool(zero.get("overlap_comm", ds.overlap_comm)),
                   contiguous_gradients=bool(zero.get("contiguous_gradients",
                                                      ds.contiguous_gradients)),
                   persistence_threshold=get("stage3_param_persistence_threshold"),
                   max_reuse_distance=get("stage3_max_reuse_distance"),
                   prefetch_bucket=get("stage3_prefetch_bucket_size"),
                   grad_accum_fp32=accum in ("fp32", "float32", "torch.float32"))


Shapes = dict[str, tuple[int, ...]]


def _groups(shapes: Shapes) -> list[list[int]]:
    """The optimizer's parameter groups in model order (pretrain.train.engine.param_groups):
    matrices (weight decay), then vectors."""
    sizes = [(math.prod(s), len(s)) for s in shapes.values()]
    return [[n for n, dim in sizes if dim >= 2], [n for n, dim in sizes if dim < 2]]


def grad_partition_elements(shapes: Shapes, ranks: int) -> int:
    """ZeRO-1/2's gradient partition on the rank holding the most: per parameter group, every
    parameter that overlaps the rank's slice of the flattened group counts whole
    (stage_1_and_2.py sizes `grads_in_partition` so)."""
    groups = []  # (partition size, start offsets of the group's parameters + its end)
    for group in _groups(shapes):
        groups.append((partition(sum(group), ranks), list(itertools.accumulate(group, initial=0))))
    worst = 0
    for rank in range(ranks):
        total = 0
        for size, starts in groups:
            lo, hi = rank * size, (rank + 1) * size
            first = bisect.bisect_right(starts, lo, 1) - 1  # the parameter holding element lo
            last = bisect.bisect_left(starts, hi, 0, len(starts) - 1)  # first starting at >= hi
            if last > first:
                total += starts[last] - starts[first]
        worst = max(worst, total)
    return worst


@dataclass(frozen=True)
class Zero3Gathered:
    persistent: int   # elements kept whole on every rank (under the persistence threshold)
    kept: int         # other elements still gathered at the end of the forward
    largest: int      # the largest module's elements (gathered while it runs)


def zero3_gathered(shapes: Shapes, knobs: ZeroKnobs) -> Zero3Gathered:
    """ZeRO-3's full parameters alive at the start of backward. A module's parameters stay
    gathered after its forward when their next use (its backward) is within
    stage3_max_reuse_distance elements of trace — twice the parameters of the modules after
    it; the prefetcher adds up to stage3_prefetch_bucket_size elements of the rest."""
    threshold = knobs.persistence_threshold
    sizes = [math.prod(s) for s in shapes.values()]
    persistent = sum(n for n in sizes if n < threshold)
    modules: dict[str, list[int]] = {}
    for name, shape in shapes.items():
        modules.setdefault(name.rsplit(".", 1)[0], []).append(math.prod(shape))
    kept, after = 0, sum(sizes)
    for params in modules.values():
        after -= sum(params)
        if 2 * after < knobs.max_reuse_distance:
            kept += sum(n for n in params if n >= threshold)
    sharded = sum(sizes) - persistent
    kept += min(knobs.prefetch_bucket, sharded - kept)
    largest = max((sum(n for n in params if n >= threshold) for params in modules.values()),
                  default=0)
    return Zero3Gathered(persistent, kept, largest)
