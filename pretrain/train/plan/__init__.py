"""`arrowtrain plan`'s estimator: will a run config fit, how long will it take, what will it cost
— from the typed run config alone, torch-free (answers in well under a second).

    from pretrain.train.plan import Hardware, make_plan
    plan = make_plan(cfg, Hardware.named("h100", gpus=8))
    plan.memory.allocated, plan.fits, plan.max_micro_batch, plan.time.tokens_per_sec

Modules: activations.py (what autograd keeps, tensor by tensor), states.py (weights, gradients,
optimizer states and DeepSpeed buffers by precision and ZeRO stage), peak.py (the moments of a
step and the highest), timing.py (FLOPs from pretrain.model.flops, the trainer's MFU counter ->
tokens/s, hours, cost), hardware.py (GPU table), advice.py (largest micro-batch, what to
change). The trainer logs `memory_planned_bytes` from `planned_peak_bytes` next to the peak it
measures (pretrain/train/memcheck.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pretrain.data.span import span_lengths
from pretrain.model.shapes import parameter_shapes
from pretrain.train.config import RunConfig
from pretrain.train.plan.activations import Activations, Numerics, Shape, activations
from pretrain.train.plan.advice import (
    MAX_GPUS,
    MAX_MICRO_BATCH,
    Step,
    candidate_steps,
    largest_fitting,
)
from pretrain.train.plan.hardware import Hardware, allowance
from pretrain.train.plan.peak import Parts, StepInputs, autocast_weight_copies, peak
from pretrain.train.plan.states import ZeroKnobs
from pretrain.train.plan.timing import Timing, timing


def sequence_parallel_size(cfg: RunConfig) -> int:
    """Ranks one sequence is split over (`parallel.sequence_parallel_size`, DeepSpeed-Ulysses,
    pretrain/train/sequence.py): every activation per rank divides by it, and the global batch
    by world / it. Model states do not: they are sharded over every rank as before."""
    return cfg.parallel.sequence_parallel_size


def lengths(cfg: RunConfig) -> tuple[int, int]:
    """(decoder / self-attention length, encoder length) of the config's batches (0: none);
    seq2seq batches are padded to their longest pair, at most these."""
    d = cfg.data
    if d.objective == "clm":
        return d.seq_len, 0
    if d.objective == "seq2seq":
        return d.target_length, d.input_length
    target = d.target_length or span_lengths(d.input_length, d.noise_density,
                                             d.mean_span_length).targets_length
    return target, d.input_length


def grad_accum(cfg: RunConfig, world_size: int, micro_batch: int) -> int:
    """Micro-batches per step (rounded up where the global batch does not divide) on each of
    the world / P data-parallel ranks."""
    dp_world = max(1, world_size // sequence_parallel_size(cfg))
    per_rank = -(-cfg.train.global_batch_size // dp_world)
    return max(1, -(-per_rank // micro_batch))


def step_activations(cfg: RunConfig, micro_batch: int, device: str = "cuda") -> Activations:
    s, src = lengths(cfg)
    m = cfg.model
    dense = m.family == "decoder" and m.doc_masking and m.doc_kernel(device) == "dense"
    return activations(m, Numerics.of(cfg.precision, device), Shape(micro_batch, s, src),
                       cfg.train.activation_checkpointing, dense_doc_mask=dense,
                       sequence_parallel=sequence_parallel_size(cfg))


def step_inputs(cfg: RunConfig, world_size: int, micro_batch: int) -> StepInputs:
    if cfg.model.vocab_size is None:
        raise ValueError("model.vocab_size is not set")
    shapes = parameter_shapes(cfg.model)
    copies = autocast_weight_copies(shapes, cfg.model, cfg.train.activation_checkpointing) \
        if cfg.precision == "bf16_autocast" else 0
    return StepInputs(shapes, cfg.precision, ZeroKnobs.of(cfg.deepspeed), world_size,
                      grad_accum(cfg, world_size, micro_batch), copies)


def memory_peak(cfg: RunConfig, world_size: int, micro_batch: int | None = None,
                device: str = "cuda") -> Parts:
    """The highest moment of a training step on one rank, itemised (bytes, no allowance for
    fragmentation: comparable with max_memory_allocated and CPU tensor peaks)."""
    b = micro_batch or cfg.train.micro_batch_size
    m = cfg.model
    return peak(step_inputs(cfg, world_size, b), step_activations(cfg, b, device),
                m.vocab_size * m.d_model)


def planned_peak_bytes(cfg: RunConfig, world_size: int, device: str) -> int:
    """What the trainer logs as memory_planned_bytes for this rank count and device."""
    return memory_peak(cfg, world_size, device=device).allocated


# ----------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Memory:
    """Per GPU: the itemised allocated peak and the allowance on top (hardware.allowance)."""

    peak: Parts
    fragmentation: int

    @property
    def allocated(self) -> int:
        return self.peak.allocated

    @property
    def total(self) -> int:
        return self.peak.allocated + self.fragmentation

    def as_dict(self) -> dict[str, int]:
        return {**self.peak.as_dict(), "fragmentation": self.fragmentation, "total": self.total}


def memory(cfg: RunConfig, hw: Hardware, micro_batch: int | None = None) -> Memory:
    parts = memory_peak(cfg, hw.gpus, micro_batch)
    return Memory(parts, allowance(parts.allocated))


def fits(cfg: RunConfig, hw: Hardware, micro_batch: int | None = None) -> bool:
    return memory(cfg, hw, micro_batch).total <= hw.memory_bytes


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    hardware: Hardware
    memory: Memory
    fits: bool
    max_micro_batch: int
    steps: list[Step]          # what to change, in order of cost, until it fits
    time: Timing
    mfu: float
    warnings: list[str]


def _more_gpus(cfg: RunConfig, hw: Hardware) -> Step | None:
    """The fewest GPUs (whole nodes when gpus_per_node is given) at which `cfg` fits."""
    unit = hw.gpus_per_node or 1
    fits_on = lambda n: fits(cfg, replace(hw, gpus=n * unit))  # noqa: E731
    n = largest_fitting(lambda k: not fits_on(k), MAX_GPUS // unit) + 1
    if n * unit > MAX_GPUS or not fits_on(n):
        return None
    what = f"{n} nodes × {unit} GPUs" if hw.gpus_per_node else f"{n} GPUs"
    flag = f"--nodes {n} --gpus-per-node {unit}" if hw.gpus_per_node else f"--gpus {n}"
    total = memory(cfg, replace(hw, gpus=n * unit)).total
    return Step(f"more GPUs: {what} (model states sharded further)", (flag,), total, True)


def advice(cfg: RunConfig, hw: Hardware, max_micro: int) -> list[Step]:
    """The changes to try, cheapest first, until one fits (empty when the config fits)."""
    if fits(cfg, hw):
        return []
    out: list[Step] = []
    if 0 < max_micro < cfg.train.micro_batch_size:
        return [Step(f"micro-batch {max_micro} (more accumulation steps, same result)",
                     (f"train.micro_batch_size={max_micro}",),
                     memory(cfg, hw, max_micro).total, True)]
    last = cfg
    for what, overrides, changed in candidate_steps(cfg):
        ok = fits(changed, hw)
        out.append(Step(what, overrides, memory(changed, hw).total, ok))
        last = changed
        if ok:
            return out
    more = _more_gpus(last, hw)
    if more is not None:
        out.append(more)
    return out


def _warnings(cfg: RunConfig, hw: Hardware) -> list[str]:
    out = []
    t, P = cfg.train, sequence_parallel_size(cfg)
    if hw.gpus % P:
        out.append(f"parallel.sequence_parallel_size {P} does not divide {hw.gpus} GPUs: the "
                   "trainer refuses this layout")
    dp = max(1, hw.gpus // P)
    ranks = f"{hw.gpus} GPUs" if P == 1 else \
        f"{dp} data-parallel ranks ({hw.gpus} GPUs / {P} per sequence)"
    if t.global_batch_size % (t.micro_batch_size * dp):
        out.append(f"train.global_batch_size {t.global_batch_size} does not divide into "
                   f"micro-batches of {t.micro_batch_size} on {ranks}: the trainer refuses this layout "
                   "(planned with accumulation steps rounded up)")
    if cfg.precision == "fp32":
        out.append("precision fp32: GPUs run fp32 matmuls far below the bf16 peak the time "
                   "assumes")
    if cfg.deepspeed.offload_optimizer:
        out.append("optimizer offload: the CPU step's time is not in the estimate")
    if cfg.model.family == "encdec":
        out.append("encoder-decoder activations are counted like the decoder's but were not "
                   "checked against measured runs")
    return out


def make_plan(cfg: RunConfig, hw: Hardware, mfu: float = 0.4, tokens: float | None = None,
              price_per_gpu_hour: float | None = None) -> Plan:
    """Memory, what fits, what to change, and time for `cfg` on `hw` (vocab_size set)."""
    mem = memory(cfg, hw)
    max_micro = largest_fitting(lambda b: fits(cfg, hw, b), MAX_MICRO_BATCH)
    s, src = lengths(cfg)
    t = timing(cfg, s, src, hw.gpus, hw.peak_flops, mfu, tokens, price_per_gpu_hour)
    return Plan(cfg, hw, mem, mem.total <= hw.memory_bytes, max_micro,
                advice(cfg, hw, max_micro), t, mfu, _warnings(cfg, hw))
