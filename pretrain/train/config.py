"""The run config: one YAML file per run, sections per docs/design.md §6.

`RunConfig` composes the model's `ModelConfig` and the loader's `DataConfig` (each kept next to
the code that uses it) with the trainer's own sections below. `load_run_config` reads the YAML
(`base:` inheritance), applies dotted overrides and reports every problem in one ConfigError.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, model_validator

from pretrain.configlib import (
    ConfigError,
    Section,
    apply_overrides,
    format_validation_error,
    load_yaml,
)
from pretrain.data import DataConfig
from pretrain.model import ModelConfig


class OptimConfig(Section):
    """AdamW; weight decay applies to matrices only (not biases or norm gains)."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 disables")


class ScheduleConfig(Section):
    """Learning-rate multiplier over steps; see pretrain/train/schedule.py."""

    name: Literal["constant", "cosine", "linear", "wsd", "inverse_sqrt"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying")

    @model_validator(mode="after")
    def _warmup_for_inverse_sqrt(self):
        if self.name == "inverse_sqrt" and self.warmup_steps == 0:
            raise ValueError("warmup_steps must be > 0 for inverse_sqrt")
        return self


class TrainConfig(Section):
    """The step loop. Host syncs: the loss, grad norm, stop flag and non-finite watch stay on
    the device and are read (one collective, one copy to the host) only at a *sync step*: every
    log, eval and checkpoint step, the last step, and otherwise at most every
    `sync_every_steps` steps — fewer when steps are slow, so that a stop request (SIGUSR1 /
    SIGTERM) waits at most about `sync_every_seconds` (plus one step) before the save starts."""

    max_steps: int = Field(..., gt=0)
    global_batch_size: int = Field(..., gt=0, description="samples per optimizer step, all ranks")
    micro_batch_size: int = Field(..., gt=0, description="samples per forward, per rank")
    compile: bool = False
    stop_at_step: int | None = Field(
        None, gt=0, description="save and exit 75 (resume me) on reaching this step")
    sync_every_steps: int = Field(
        10, gt=0, description="most steps between host syncs (stop flag, non-finite watch)")
    sync_every_seconds: float = Field(
        10.0, gt=0, description="fewer steps between syncs when steps are slower than this / N")

    @model_validator(mode="after")
    def _batches_divide(self, info: ValidationInfo):
        world = (info.context or {}).get("world_size")
        gbs, mbs = self.global_batch_size, self.micro_batch_size
        if gbs % mbs:
            raise ValueError(f"global_batch_size ({gbs}) is not divisible by "
                             f"micro_batch_size ({mbs})")
        if world and gbs % (mbs * world):
            raise ValueError(f"global_batch_size ({gbs}) is not divisible by "
                             f"micro_batch_size × ranks ({mbs} × {world})")
        return self


class DeepSpeedSection(Section):
    """The DeepSpeed engine's knobs (the JSON is generated from these, plus `extra`).

    Defaults are chosen for speed on one GPU, after reading DeepSpeed 0.19.8's source
    (README "Performance" has the measured figures):
    - throughput_timer: DeepSpeed's samples/s timer calls a device synchronize twice per
      step; we log our own tokens/s, so it is off.
    - check_grad_overflow (precision bf16 only): DeepSpeed's bf16 overflow check reduces every
      gradient and reads the result on the host every step. Off: the trainer's own non-finite
      watch (loss and grad norm, read at the next sync) stops the run instead, naming the step.
    - overlap_comm / contiguous_gradients / reduce_bucket_size / allgather_bucket_size: ZeRO's
      gradient buckets. On one GPU nothing is reduced and overlap_comm only adds a device sync
      per backward, so it is off; the buckets cost memory, not time. On many GPUs try
      overlap_comm true (it overlaps the reduce with backward when gradients arrive during
      backward) and bigger buckets for fewer, larger collectives.
    - python_gc_every_steps: DeepSpeed disables Python's automatic cyclic GC (which can pause
      a rank mid-step at a random moment, stalling all the others), and the trainer collects
      every N steps at a step boundary, on every rank together (torchtitan's gc_freq). 0 leaves
      Python's automatic GC alone.
    """

    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state on CPU")
    throughput_timer: bool = Field(False, description="DeepSpeed's samples/s timer (2 syncs/step)")
    check_grad_overflow: bool = Field(
        False, description="bf16 only: DeepSpeed's per-step overflow check (a host sync)")
    overlap_comm: bool = Field(False, description="overlap ZeRO reduction with backward")
    contiguous_gradients: bool = Field(True, description="copy grads into one bucket buffer")
    reduce_bucket_size: int = Field(500_000_000, gt=0, description="elements per reduce bucket")
    allgather_bucket_size: int = Field(500_000_000, gt=0,
                                       description="elements per ZeRO all-gather bucket")
    python_gc_every_steps: int = Field(
        50, ge=0, description="automatic GC off, collect every N steps; 0: Python's own GC")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="escape hatch: merged into the generated JSON")

    @model_validator(mode="after")
    def _offload_needs_zero(self):
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self


class CheckpointConfig(Section):
    every_steps: int = Field(1000, gt=0)
    keep_last: int = Field(3, ge=1)
    save_at_end: bool = True


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "arrowtrain"
    name: str | None = None
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)


class LoggingConfig(Section):
    every_steps: int = Field(10, gt=0)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    progress_bar: bool = True


class EvalConfig(Section):
    every_steps: int = Field(0, ge=0, description="0: evaluate only at the end")
    max_samples: int | None = Field(256, gt=0, description="validation samples per evaluation")
    at_end: bool = True


# fp32           everything in fp32.
# bf16           DeepSpeed's bf16 mode: bf16 weights and gradients, an fp32 master copy of the
#                weights in the optimizer (ZeRO >= 1; at ZeRO-0 DeepSpeed's unfused wrapper).
# bf16_autocast  DeepSpeed's torch_autocast mode with dtype bfloat16 (always set: without it
#                torch would pick fp16 on CUDA with no loss scaling): fp32 weights and
#                gradients, the forward under torch.autocast (matmuls in bf16, norms/softmax/loss
#                in fp32) — what nanoGPT does; the optimizer steps the fp32 weights directly
#                (ZeRO-0) and ZeRO reduces Linear gradients in bf16.
# fp16           DeepSpeed's fp16 mode with dynamic loss scaling.
Precision = Literal["fp32", "bf16", "bf16_autocast", "fp16"]


class RunConfig(Section):
    run_dir: Path
    seed: int = 1234
    precision: Precision = "fp32"
    resume: Literal["auto", "never"] = "auto"
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _cross_checks(cfg: RunConfig) -> list[str]:
    """Problems no single section can see (run once every section is valid)."""
    problems = []
    if cfg.schedule.warmup_steps > cfg.train.max_steps:
        problems.append(f"schedule.warmup_steps ({cfg.schedule.warmup_steps}) exceeds "
                        f"train.max_steps ({cfg.train.max_steps})")
    if cfg.deepspeed.check_grad_overflow and cfg.precision != "bf16":
        problems.append(f"deepspeed.check_grad_overflow applies to precision bf16 only "
                        f"(precision is {cfg.precision})")
    return problems


def build_run_config(data: dict[str, Any], world_size: int | None = None,
                     source: str | None = None) -> RunConfig:
    """Validate a resolved mapping; every problem of every section in one ConfigError."""
    try:
        cfg = RunConfig.model_validate(data, context={"world_size": world_size})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), source) from None
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_run_config(path: str | Path, overrides: Iterable[str] = (),
                    world_size: int | None = None) -> RunConfig:
    """Read `path` (with `base:` files), apply `key=value` overrides, validate everything.

    `world_size`, when known (the launcher knows it before starting processes), adds the check
    that the global batch divides evenly into micro-batches on every rank."""
    raw = apply_overrides(load_yaml(path), overrides)
    return build_run_config(raw, world_size, source=str(path))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain-YAML/JSON form of the resolved config (paths as strings)."""
    return cfg.model_dump(mode="json")
