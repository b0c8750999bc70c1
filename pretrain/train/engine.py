"""The one place that talks to DeepSpeed: distributed set-up, the generated DeepSpeed config,
the optimizer and the single `deepspeed.initialize` call."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretrain.configlib import deep_merge
from pretrain.data import layout
from pretrain.model.config import ModelConfig
from pretrain.model.mup import group_specs, param_roles
from pretrain.train.config import RunConfig, data_parallel_size
from pretrain.train.distenv import DistEnv, import_deepspeed
from pretrain.train.parallelize import compile_engine, parallelize
from pretrain.train.schedule import build_scheduler
from pretrain.train.sequence import SequenceParallel


def use_gpu() -> bool:
    return torch.cuda.is_available()


def init_distributed(dist: DistEnv) -> torch.device:
    """Start the process group (gloo on CPU, nccl on GPU) and pick this rank's device."""
    deepspeed = import_deepspeed()  # names the accelerator on CPU: no warning on every rank
    from deepspeed import ops as ds_ops

    if use_gpu():
        torch.cuda.set_device(dist.local_rank)
        device, backend = torch.device("cuda", dist.local_rank), "nccl"
    else:
        # Only inference_all_reduce uses this op; building it costs ~35 s per start on CPU.
        ds_ops.__compatible_ops__["deepspeed_shm_comm"] = False
        device, backend = torch.device("cpu"), "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return device


def grad_accum_steps(cfg: RunConfig, world_size: int) -> int:
    """Micro-batches per rank per step: the global batch over the data-parallel ranks
    (world / parallel.sequence_parallel_size)."""
    t = cfg.train
    dp_world = data_parallel_size(world_size, cfg.parallel.sequence_parallel_size)
    return layout.grad_accum_steps(t.global_batch_size, t.micro_batch_size, dp_world)


def _precision(cfg: RunConfig) -> dict[str, Any]:
    """The bf16 / fp16 / torch_autocast entries for `precision` (see config.Precision)."""
    p = cfg.precision
    out: dict[str, Any] = {
        "bf16": {"enabled": p == "bf16"},
        "fp16": {"enabled": p == "fp16", "initial_scale_power": 16},
        # dtype always set: DeepSpeed passes None to torch.autocast otherwise (fp16 on CUDA).
        "torch_autocast": {"enabled": p == "bf16_autocast", "dtype": "bfloat16"},
    }
    if p == "bf16":
        out["bf16"]["check_grad_overflow"] = cfg.deepspeed.check_grad_overflow
    return out


def _zero(cfg: RunConfig) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.zero_stage, "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu()}
    return zero


def deepspeed_config(cfg: RunConfig, world_size: int,
                     load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON, generated from the typed config (plus `deepspeed.extra`).
    `load_universal`: the engine will load a universal checkpoint (pretrain/train/reshard.py)."""
    ds = cfg.deepspeed
    out: dict[str, Any] = {
        # DeepSpeed sees every rank as data-parallel (pretrain/train/sequence.py): to it each
        # of a row's P pieces is a sample.
        "train_batch_size": cfg.train.global_batch_size * cfg.parallel.sequence_parallel_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": _zero(cfg),
        **_precision(cfg),
        "timers": {"throughput": {"enabled": ds.throughput_timer}},
        "disable_python_gc": ds.python_gc_every_steps > 0,
        "steps_per_print": 10**12,  # our own logging does this
        "wall_clock_breakdown": False,
    }
    if load_universal:
        out["checkpoint"] = {"load_universal": True}
    if ds.offload_optimizer:  # DeepSpeedCPUAdam, built by DeepSpeed from this entry
        o = cfg.optim
        out["optimizer"] = {"type": "AdamW", "params": {
            "lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps,
            "weight_decay": o.weight_decay}}
        out["zero_allow_untested_optimizer"] = True
    return deep_merge(out, ds.extra)


def param_groups(model: nn.Module, weight_decay: float,
                 model_cfg: ModelConfig | None = None) -> list[dict[str, Any]]:
    """The optimizer's groups (pretrain.model.mup.group_specs; `model_cfg` defaults to
    model.cfg): each named, with its lr factor (`lr_scale`), its lr at the peak and its weight
    decay. Standard: decay the matrices (linear and embedding weights), not biases or norm
    gains. muP: hidden matrices apart at lr/m and decay ×m."""
    specs = group_specs(model_cfg or model.cfg, weight_decay)
    roles = param_roles(model)
    named = dict(model.named_parameters())
    groups = []
    for spec in specs:
        params = [named[n] for n, role in roles.items()
                  if role in spec.roles and named[n].requires_grad]
        groups.append({"params": params, "name": spec.name, "lr_scale": spec.lr_scale,
                       "weight_decay": spec.weight_decay})
    return groups


def build_optimizer(groups: list[dict[str, Any]], cfg: RunConfig) -> torch.optim.Optimizer:
    """torch AdamW with its fused kernel, on GPU and CPU alike (one kernel for all parameters
    instead of a Python loop over them; deterministic, so a resume stays bitwise exact). Each
    group's lr is optim.lr × its lr_scale (the schedule then scales each from there)."""
    o = cfg.optim
    groups = [{**g, "lr": o.lr * g.get("lr_scale", 1.0)} for g in groups]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                             fused=True)


def initialize(model: nn.Module, cfg: RunConfig, world_size: int,
               load_universal: bool = False, sp: SequenceParallel | None = None):
    """Wrap `model` in a DeepSpeed engine with our optimizer and lr schedule; `sp`: this rank's
    sequence group (parallel.sequence_parallel_size > 1). Returns (engine, lr_scheduler)."""
    deepspeed = import_deepspeed()

    model = parallelize(model, cfg, sp)  # sequence parallelism, checkpointing, compile
    groups = param_groups(model, cfg.optim.weight_decay, cfg.model)
    if cfg.deepspeed.offload_optimizer:  # DeepSpeed builds the optimizer from these groups
        groups = [{**g, "lr": cfg.optim.lr * g["lr_scale"]} for g in groups]
    ds_config = deepspeed_config(cfg, world_size, load_universal)
    if cfg.deepspeed.offload_optimizer:
        optimizer = None
        scheduler = lambda opt: build_scheduler(opt, cfg.schedule, cfg.train.max_steps)  # noqa: E731
    else:
        optimizer = build_optimizer(groups, cfg)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
    engine, _, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups,
        lr_scheduler=scheduler, config=ds_config)
    compile_engine(engine, cfg.train)  # train.compile_scope engine
    return engine, lr_scheduler
