"""How a global batch splits into ranks and micro-batches (docs/design.md §3): the one
divisibility check, shared by the run config, the engine's gradient accumulation and the
loader; and the one rule for an evaluation batch (micro-batch × ranks), shared by the run
config, the pre-flight and the loader. Torch-free (the launchers run it before any rank
starts)."""

from __future__ import annotations

from dataclasses import dataclass


def batch_layout_problem(global_batch: int, micro_batch: int, world: int) -> str | None:
    """Why `global_batch` samples cannot be split into `micro_batch`-sized pieces on each of
    `world` ranks, or None when they can."""
    if micro_batch < 1 or world < 1 or global_batch % (micro_batch * world):
        return (f"train.global_batch_size ({global_batch}) is not divisible by "
                f"train.micro_batch_size × ranks ({micro_batch} × {world})")
    return None


def grad_accum_steps(global_batch: int, micro_batch: int, world: int) -> int:
    """Micro-batches per rank per optimizer step; ValueError when the batch does not divide."""
    problem = batch_layout_problem(global_batch, micro_batch, world)
    if problem:
        raise ValueError(problem)
    return global_batch // (micro_batch * world)


def eval_batch_problem(what: str, samples: int, micro_batch: int, world: int) -> str | None:
    """An evaluation batch is micro_batch × ranks samples (every rank runs the same number of
    micro-batches): why `samples` of `what` do not fill one, or None when they do. Callers add
    what to change."""
    if samples >= micro_batch * world:
        return None
    return (f"{what} ({samples}) is less than one evaluation batch, micro_batch_size × ranks "
            f"({micro_batch} × {world})")


@dataclass(frozen=True)
class RankSlice:
    """Rank `rank` of `world` training on global batches of `global_batch` samples, in
    micro-batches of `micro_batch` (checked by batch_layout_problem first)."""

    global_batch: int
    micro_batch: int
    rank: int
    world: int

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world

    @property
    def micro_per_step(self) -> int:
        return self.per_rank // self.micro_batch


def samples_in_stream(stream_len: int, window: int, stride: int) -> int:
    """Samples of `window` tokens every `stride` tokens in a packed stream of `stream_len`."""
    return (stream_len - window) // stride + 1 if stream_len >= window else 0


def stream_tokens_for(samples: int, window: int, stride: int) -> int:
    """The shortest stream that gives `samples` samples (samples_in_stream's inverse)."""
    return window + (max(1, samples) - 1) * stride
