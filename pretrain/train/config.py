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


CompileScope = Literal["engine", "model", "blocks"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class ActivationCheckpointing(Section):
    """Which blocks recompute their forward during backward, and what they keep.

    none      keep every activation (fastest, most memory)
    full      every block keeps only its input and recomputes everything
    every_n   blocks 0, n, 2n, ... of each stack recompute fully, the others keep everything
    selective every block keeps the outputs of its matmuls and of attention and recomputes the
              cheap pointwise ops (norms, activations, dropout, rotary, residual adds) — an
              op-level policy (torch's selective-checkpoint contexts, as torchtitan);
              `selective_mm: every_second` also recomputes every second matmul (torchtitan)
    A plain string (`full`) or `{every_n: k}` is short for `{mode: ...}`. Applied to the model
    from outside by pretrain/train/parallelize.py.
    """

    mode: Literal["none", "full", "every_n", "selective"] = "none"
    every_n: int | None = Field(None, ge=1, description="mode every_n: checkpoint 1 block in n")
    selective_mm: Literal["all", "every_second"] = Field(
        "all", description="mode selective: which matmul outputs are kept")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"mode": data}
        if isinstance(data, dict) and "mode" not in data and "every_n" in data:
            return {**data, "mode": "every_n"}
        return data

    @model_validator(mode="after")
    def _options_match_mode(self):
        if self.mode == "every_n" and self.every_n is None:
            raise ValueError("mode every_n needs every_n: k (checkpoint blocks 0, k, 2k, ...)")
        if self.mode != "every_n" and self.every_n is not None:
            raise ValueError(f"every_n applies to mode every_n, not {self.mode}")
        if self.mode != "selective" and self.selective_mm != "all":
            raise ValueError(f"selective_mm applies to mode selective, not {self.mode}")
        return self

    def checkpointed(self, index: int) -> bool:
        """Whether block `index` (counted within its stack) is checkpointed at all."""
        if self.mode == "every_n":
            return index % self.every_n == 0
        return self.mode in ("full", "selective")


class TrainConfig(Section):
    max_steps: int = Field(..., gt=0)
    global_batch_size: int = Field(..., gt=0, description="samples per optimizer step, all ranks")
    micro_batch_size: int = Field(..., gt=0, description="samples per forward, per rank")
    # Applied to the model from outside (pretrain/train/parallelize.py), never changing a result:
    activation_checkpointing: ActivationCheckpointing = Field(
        default_factory=ActivationCheckpointing)
    compile: bool = False
    compile_scope: CompileScope = "engine"
    compile_mode: CompileMode = "default"
    stop_at_step: int | None = Field(
        None, gt=0, description="save and exit 75 (resume me) on reaching this step")

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
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state on CPU")
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


class RunConfig(Section):
    run_dir: Path
    seed: int = 1234
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
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
