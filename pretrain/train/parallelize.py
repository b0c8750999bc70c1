"""Run options applied to the plain model from outside, once, before `deepspeed.initialize`
(torchtitan's "parallelize" step): Ulysses sequence parallelism (pretrain/train/sequence.py),
activation checkpointing by policy and where `torch.compile` goes. The model code
(pretrain/model/) knows nothing of them.

    train.activation_checkpointing  none | full | selective | {every_n: k}
                                    | {mode: selective, selective_mm: every_second}
    train.compile                   false | true
    train.compile_scope             engine: DeepSpeed's engine.compile() after initialize (the
                                            whole module, DeepSpeed's hooks on it included)
                                    model:  the model's forward, before initialize (the hooks
                                            DeepSpeed adds stay eager)
                                    blocks: each Transformer block, before initialize (torchtitan)
    train.compile_mode              default | reduce-overhead | max-autotune
                                    | max-autotune-no-cudagraphs

Checkpointing changes a block's class in place (as FSDP2's `fully_shard` does) instead of
wrapping it in another module, so parameter names and state-dict keys stay the same: checkpoints,
export and resume are unaffected by the policy, which may change between restarts.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn

from pretrain.configlib import ConfigError
from pretrain.model.blocks import Stack
from pretrain.train.config import (
    ActivationCheckpointing,
    CompileMode,
    CompileScope,
    RunConfig,
    TrainConfig,
)
from pretrain.train.sequence import SequenceParallel, apply_sequence_parallel

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- checkpointing

class _Checkpointed:
    """Mixed into a block's class: while training with gradients (and not decoding with a KV
    cache) its forward runs under non-reentrant torch.utils.checkpoint. `_ac_context_fn` decides
    what is kept inside the block (`noop_context_fn`: nothing but the block's inputs)."""

    _ac_context_fn = staticmethod(noop_context_fn)

    def forward(self, x: torch.Tensor, **kw) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()) or kw.get("cache") is not None:
            return super().forward(x, **kw)
        return checkpoint(super().forward, x, use_reentrant=False,
                          context_fn=self._ac_context_fn, **kw)


_CHECKPOINTED_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    if issubclass(cls, _Checkpointed):
        return cls
    if cls not in _CHECKPOINTED_CLASSES:
        _CHECKPOINTED_CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
    return _CHECKPOINTED_CLASSES[cls]


def _matmul_and_attention_ops() -> tuple[set, set]:
    """(matmuls, every op whose output `selective` keeps): aten matmuls and the fused attention
    kernels SDPA dispatches to, looked up by name so a build without one still works; plus
    flex_attention's higher-order op."""
    aten = torch.ops.aten
    matmuls = {getattr(aten, n).default for n in ("mm", "addmm", "bmm", "_scaled_mm")
               if hasattr(aten, n)}
    attention = {getattr(aten, n).default for n in (
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable") if hasattr(aten, n)}
    # registered when pretrain.model.layers imported flex_attention (torch >= 2.5)
    flex = getattr(torch.ops.higher_order, "flex_attention", None)
    return matmuls, matmuls | attention | ({flex} if flex is not None else set())


def selective_context_fn(every_second_mm: bool = False):
    """A checkpoint `context_fn` for the op-level policy: keep matmul and attention outputs,
    recompute the rest. With `every_second_mm`, matmuls 2, 4, ... of each block call are
    recomputed too (counted separately in the forward and in the recomputation, which must
    decide alike)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    matmuls, keep = _matmul_and_attention_ops()

    def context_fn():
        seen = {False: 0, True: 0}  # matmuls so far: in the forward, in the recomputation

        def policy(ctx, func, *args, **kwargs):
            if func in matmuls:
                seen[ctx.is_recompute] += 1
                if every_second_mm and seen[ctx.is_recompute] % 2 == 0:
                    return CheckpointPolicy.PREFER_RECOMPUTE
            return CheckpointPolicy.MUST_SAVE if func in keep else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return context_fn


def transformer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The block lists of the model's stacks (decoder: one; encoder-decoder: two)."""
    return [m.blocks for m in model.modules() if isinstance(m, Stack)]


def apply_activation_checkpointing(model: nn.Module, ac: ActivationCheckpointing) -> int:
    """Checkpoint the blocks `ac` selects, in place; returns how many."""
    context_fn = (selective_context_fn(ac.selective_mm == "every_second")
                  if ac.mode == "selective" else noop_context_fn)
    count = 0
    for blocks in transformer_stacks(model):
        for i, block in enumerate(blocks):
            if ac.checkpointed(i):
                block.__class__ = _checkpointed_class(type(block))
                block._ac_context_fn = context_fn
                count += 1
    return count


# ----------------------------------------------------------------------------- compilation

def _compile_kwargs(mode: CompileMode) -> dict[str, Any]:
    return {} if mode == "default" else {"mode": mode}


def apply_compile(model: nn.Module, scope: CompileScope, mode: CompileMode = "default",
                  backend: str = "inductor") -> None:
    """torch.compile before the engine exists, in place (parameter names unchanged):
    `blocks` compiles each block's call, `model` the model's forward."""
    kwargs = {**_compile_kwargs(mode), "backend": backend}
    if scope == "blocks":
        for blocks in transformer_stacks(model):
            for block in blocks:
                block.compile(**kwargs)
    elif scope == "model":
        model.forward = torch.compile(model.forward, **kwargs)
    else:
        raise ValueError(f"compile scope {scope!r} is applied by compile_engine()")


def parallelize(model: nn.Module, cfg: RunConfig, sp: SequenceParallel | None = None,
                ) -> nn.Module:
    """Everything done to the plain model before deepspeed.initialize: Ulysses attention over
    `sp`'s sequence group (pretrain/train/sequence.py), activation checkpointing, then
    compilation when train.compile_scope is blocks or model. Returns `model`."""
    train, ac = cfg.train, cfg.train.activation_checkpointing
    if sp is not None and sp.size > 1:
        layers = apply_sequence_parallel(model, sp)
        log.info("sequence parallelism: %d attention layers over %d ranks per row (piece %d)",
                 layers, sp.size, sp.index)
    m = cfg.model
    if m.doc_masking and m.doc_mask_kernel == "flex" and not torch.cuda.is_available():
        raise ConfigError(["model.doc_mask_kernel: flex needs a GPU to train (torch's "
                           "flex_attention has no backward on CPU); use auto (dense on CPU) or "
                           "dense"])
    count = apply_activation_checkpointing(model, ac)
    total = sum(len(blocks) for blocks in transformer_stacks(model))
    kept = {"all": "every matmul", "every_second": "every second matmul"}[ac.selective_mm]
    detail = f" ({kept} kept)" if ac.mode == "selective" else ""
    log.info("activation checkpointing %s%s: %d of %d blocks", ac.mode, detail, count, total)
    if train.compile and train.compile_scope != "engine":
        apply_compile(model, train.compile_scope, train.compile_mode)
        log.info("compiled before the engine: scope %s, mode %s", train.compile_scope,
                 train.compile_mode)
    return model


def compile_engine(engine: Any, train: TrainConfig) -> None:
    """train.compile_scope engine: DeepSpeed's engine.compile() once the engine exists."""
    if train.compile and train.compile_scope == "engine":
        engine.compile(compile_kwargs=_compile_kwargs(train.compile_mode))
