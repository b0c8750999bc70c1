"""The run config: one YAML file per run, sections per docs/design.md §6.

`RunConfig` composes the model's `ModelConfig` and the loader's `DataConfig` (each kept next to
the code that uses it; the data section is checked against its objective, pretrain.objectives)
with the trainer's own sections below. `load_run_config` reads the YAML
(`base:` inheritance), applies dotted overrides and reports every problem in one ConfigError:
malformed overrides, every section's own problems, and the checks across sections (which run on
every section that is valid by itself, so one bad section hides nothing). The checks against the
data folders come on top in `pretrain.train.preflight`. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from data_tools.remote import RemoteError, S3Path
from pretrain.configlib import (
    ConfigError,
    Override,
    Problem,
    Section,
    apply_overrides,
    attribute,
    load_yaml,
    parse_overrides,
    validation_problems,
)
from pretrain.data.layout import batch_layout_problem, eval_batch_problem
from pretrain.model.config import ModelConfig
from pretrain.objectives import DataSection, all_objectives, objective_for


class OptimConfig(Section):
    """AdamW; weight decay applies to matrices only (not biases or norm gains)."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only)")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first-moment decay")
    beta2: float = Field(0.95, ge=0, lt=1, description="Adam's second-moment decay")
    eps: float = Field(1e-8, gt=0, description="Adam's epsilon")
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 disables")


class ScheduleConfig(Section):
    """Learning-rate multiplier over steps; see pretrain/train/schedule.py."""

    name: Literal["constant", "cosine", "linear", "wsd", "inverse_sqrt"] = Field(
        "cosine", description="after the warmup: constant; cosine or linear decay to "
        "min_lr_ratio at max_steps; wsd: constant, then a linear decay to min_lr_ratio over "
        "the last decay_fraction of the steps; inverse_sqrt: optim.lr * sqrt(warmup_steps / "
        "step) after the warmup (the 2017 paper's; needs warmup_steps > 0)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from 0 to optim.lr")
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

    mode: Literal["none", "full", "every_n", "selective"] = Field(
        "none", description="none: keep every activation; full: every block recomputes its "
        "forward; every_n: blocks 0, n, 2n, ... do; selective: every block keeps its matmul and "
        "attention outputs and recomputes the pointwise ops (a plain string, `full`, is short "
        "for {mode: full})")
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
    """The step loop. Host syncs: the loss, grad norm, stop flag and non-finite watch stay on
    the device and are read (one collective, one copy to the host) only at a *sync step*: every
    log, eval and checkpoint step, the last step, and otherwise at most every
    `sync_every_steps` steps — fewer when steps are slow, so that a stop request (SIGUSR1 /
    SIGTERM) waits at most about `sync_every_seconds` (plus one step) before the save starts."""

    max_steps: int = Field(..., gt=0, description="optimizer steps of the whole run")
    global_batch_size: int = Field(..., gt=0, description="samples per optimizer step, all ranks")
    micro_batch_size: int = Field(..., gt=0, description="samples per forward, per rank")
    # Applied to the model from outside (pretrain/train/parallelize.py), never changing a result:
    activation_checkpointing: ActivationCheckpointing = Field(
        default_factory=ActivationCheckpointing,
        description="which blocks recompute their forward during backward (less memory, more "
        "time)")
    compile: bool = Field(False, description="torch.compile (GPUs; slow to start)")
    compile_scope: CompileScope = Field(
        "engine", description="what is compiled: the DeepSpeed engine, the model, or each "
        "block apart")
    compile_mode: CompileMode = Field("default", description="torch.compile's mode")
    stop_at_step: int | None = Field(
        None, gt=0, description="save and exit 75 (resume me) on reaching this step")
    sync_every_steps: int = Field(
        10, gt=0, description="most steps between host syncs (stop flag, non-finite watch)")
    sync_every_seconds: float = Field(
        10.0, gt=0, description="fewer steps between syncs when steps are slower than this / N")

    # Whether global_batch_size divides into micro-batches on every rank is checked across the
    # run (_batch_layout), where the number of ranks is known.


class DeepSpeedSection(Section):
    """The DeepSpeed engine's knobs (the JSON is generated from these, plus `extra`).

    Defaults are chosen for speed on one GPU, after reading DeepSpeed 0.19.8's source
    (docs/performance.md has the measured figures):
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

    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="ZeRO: 0 none; 1 optimizer state sharded across ranks; 2 and gradients; "
        "3 and parameters")
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


class ParallelConfig(Section):
    """How ranks share the work beyond data parallelism (docs/training.md#long-context)."""

    sequence_parallel_size: int = Field(
        1, ge=1, description="DeepSpeed-Ulysses sequence parallelism (decoders): each packed row "
        "is cut into this many contiguous pieces, one per rank of a sequence group, and "
        "attention swaps the sequence split for a head split (all-to-all); activations per rank "
        "shrink by it. The world size, model.n_heads, model.n_kv_heads and data.seq_len must "
        "divide by it; data-parallel ranks = world size / it")


def data_parallel_size(world_size: int | None, sequence_parallel: int) -> int:
    """Ranks that read different samples (the loader's `world`): world / P (1 when unknown;
    a world that does not divide is the pre-flight's problem, not this function's)."""
    return max(1, (world_size or 1) // max(1, sequence_parallel))


class CheckpointConfig(Section):
    # `async` is a Python keyword: the field is `async_`, the key in configs and files `async`
    model_config = ConfigDict(**Section.model_config, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    every_steps: int = Field(1000, gt=0, description="save a checkpoint every N steps")
    keep_last: int = Field(3, ge=1, description="complete checkpoints kept (older are deleted)")
    save_at_end: bool = Field(True, description="save at the last step")
    async_: Literal["auto", True, False] = Field(
        "auto", alias="async", description="true: save in the background: training waits only "
        "while the state is copied to host memory (one staged copy per node, checked at start), "
        "a writer process per rank writes the files and the checkpoint is committed (meta.json, "
        "latest) once every rank's writer is done; a stop, the last step and the next save wait "
        "for it. false: saves stop training while they write. auto: in the background where "
        "a rank's share of a checkpoint is at least 256 MiB and host RAM holds the staged copy, "
        "else synchronous (decided at each start, logged, recorded in run_events.jsonl)")
    remote: str | None = Field(
        None, description="s3://BUCKET/PREFIX: every committed checkpoint is also uploaded "
        "there in the background (each rank its own files, then meta.json, then `latest`; "
        "keep_last applies there too), and a run whose checkpoints folder is missing or older "
        "resumes from the newest complete copy there; endpoint and credentials from the AWS_* "
        "environment only (docs/training.md#remote-copies)")
    remote_timeout: float = Field(
        240.0, gt=0, description="checkpoint.remote: seconds each request keeps retrying "
        "through an outage, and the most a stop or the end of the run waits for the upload in "
        "flight (then a warning names what is not uploaded); below launch slurm's "
        "--signal-seconds (300), so a stop's wait ends before the time limit")

    @field_validator("remote")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("control characters in the address")
        try:
            return str(S3Path.parse(value))
        except RemoteError as e:
            raise ValueError(str(e)) from None

    @field_validator("async_", mode="before")
    @classmethod
    def _async_mode(cls, value):
        if isinstance(value, bool) or value == "auto":
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"true, false or auto, not {value!r}")


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: files in RUNDIR/wandb for `wandb sync`; online; "
        "disabled: metrics.jsonl only")
    project: str = Field("arrowtrain", description="W&B project")
    name: str | None = Field(None, description="W&B run name (null: W&B's own)")
    entity: str | None = Field(None, description="W&B team or user (null: your default)")
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    group: str | None = Field(
        None, description="W&B group (null: none; `arrowtrain sweep` sets the sweep folder's "
        "name)")


class LoggingConfig(Section):
    every_steps: int = Field(10, gt=0, description="a metrics row (and a log line) every N "
                             "steps")
    wandb: WandbConfig = Field(default_factory=WandbConfig,
                               description="Weights & Biases: the same rows as metrics.jsonl")
    progress_bar: bool = Field(
        True, description="rank 0 shows progress: a bar on a terminal (log lines above it), "
        "else a plain `progress:` log line every progress_every_seconds")
    progress_every_seconds: float = Field(
        30.0, gt=0, description="without a terminal: seconds between `progress:` lines")
    deepspeed_level: Literal["warning", "info", "debug"] = Field(
        "warning", description="DeepSpeed's own log lines from this level on (its INFO "
        "chatter is off by default; also the environment's ARROWTRAIN_DEEPSPEED_LOG)")


class EvalConfig(Section):
    every_steps: int = Field(0, ge=0, description="evaluate every N steps; 0: only at the end "
                             "(at_end)")
    max_samples: int | None = Field(256, gt=0, description="validation samples per evaluation "
                                    "(null: the whole val split)")
    at_end: bool = Field(True, description="evaluate after the last step")
    bleu_samples: int = Field(
        256, ge=0, description="seq2seq: val_bleu = sacreBLEU of this many val pairs, "
        "translated with beam bleu_beam, next to val_loss; 0: no val_bleu")
    bleu_beam: int = Field(1, ge=1, description="beam size for val_bleu (1: greedy)")

    @property
    def enabled(self) -> bool:
        return bool(self.every_steps) or self.at_end


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
    """A run config: one YAML file. Every key's meaning is its `description` here and in the
    sections (`arrowtrain config explain`, docs/config.md)."""

    run_dir: Path = Field(description="the run folder: checkpoints, metrics, logs; relative "
                          "paths resolve against the working directory")
    seed: int = Field(1234, ge=0, lt=2**63, description="seeds the weights, the data order and "
                      "dropout; 0 <= seed < 2**63 (torch.manual_seed takes 64 bits)")
    precision: Precision = Field(
        "fp32", description="fp32; bf16: DeepSpeed's bf16 mode (bf16 weights and gradients, an "
        "fp32 master copy); bf16_autocast: fp32 weights, the forward under torch.autocast "
        "(nanoGPT's numerics); fp16: dynamic loss scaling (docs/performance.md)")
    resume: Literal["auto", "never"] = Field(
        "auto", description="auto: continue from the run folder's last complete checkpoint if "
        "there is one; never: start at step 0 whatever the folder holds")
    init_from: Path | None = Field(
        None, description="a .safetensors file (arrowtrain export or import-hf) to start from: "
        "its weights, a fresh optimizer and schedule; ignored once the run has a checkpoint")
    model: ModelConfig = Field(description="the model (pretrain/model/config.py); with init_from, "
                               "`model: {from_init: true}` (or no model section) takes the "
                               "file's architecture, other keys in the section go over it")
    data: DataSection = Field(description="the shard folders and the objective "
                              "(pretrain/data/config.py, pretrain/objectives)")
    optim: OptimConfig = Field(default_factory=OptimConfig,
                               description="AdamW (weight decay on matrices only)")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig,
                                     description="the learning rate over the steps")
    train: TrainConfig = Field(description="the step loop: steps, batch sizes, compile, stops")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection,
                                        description="the DeepSpeed engine's knobs")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig,
                                     description="sequence parallelism (long context)")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig,
                                         description="when checkpoints are saved, how many kept")
    logging: LoggingConfig = Field(default_factory=LoggingConfig,
                                   description="metrics rows, W&B, the progress bar")
    eval: EvalConfig = Field(default_factory=EvalConfig,
                             description="validation: val_loss (and val_bpb or val_bleu)")


def _init_from_suffix(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    path = s["init_from"]
    if path is None or str(path).endswith(".safetensors"):
        return []
    return [Problem(f"init_from {path}: expected a .safetensors file written by "
                    "arrowtrain export or arrowtrain import-hf", ("init_from",))]


def _schedule_fits(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    warmup, steps = s["schedule"].warmup_steps, s["train"].max_steps
    if warmup > steps:
        return [Problem(f"schedule.warmup_steps ({warmup}) exceeds train.max_steps ({steps})",
                        ("schedule.warmup_steps", "train.max_steps"))]
    return []


def _dp_world(s: dict[str, Any], world_size: int | None) -> int | None:
    """The ranks that read different samples: world / parallel.sequence_parallel_size."""
    if world_size is None or "parallel" not in s:
        return world_size
    return data_parallel_size(world_size, s["parallel"].sequence_parallel_size)


def _sequence_parallel_fits(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    """parallel.sequence_parallel_size P: ranks, heads and the sequence divide by P; decoders
    only; no torch.compile (untested with the all-to-all inside attention)."""
    P, m, d = s["parallel"].sequence_parallel_size, s["model"], s["data"]
    if P == 1:
        return []
    key, out = "parallel.sequence_parallel_size", []

    def need(ok: bool, text: str, *keys: str) -> None:
        if not ok:
            out.append(Problem(f"{key} ({P}): {text}", (key, *keys)))

    if world_size is not None:
        need(world_size % P == 0, f"the world size ({world_size} ranks) is not divisible by it")
    need(m.family == "decoder" and objective_for(d).family == "decoder",
         f"sequence parallelism is for decoders (data.objective clm); not model.family "
         f"{m.family} / data.objective {d.objective}", "model.family", "data.objective")
    need(m.n_heads % P == 0, f"model.n_heads ({m.n_heads}) is not divisible by it",
         "model.n_heads")
    need(m.kv_heads % P == 0, f"model.n_kv_heads ({m.kv_heads}) is not divisible by it",
         "model.n_kv_heads")
    seq_len = getattr(d, "seq_len", None)
    need(seq_len is None or seq_len % P == 0,
         f"data.seq_len ({seq_len}) is not divisible by it", "data.seq_len")
    return out


def _sequence_parallel_no_compile(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    P = s["parallel"].sequence_parallel_size
    if P > 1 and s["train"].compile:
        return [Problem(f"train.compile with parallel.sequence_parallel_size {P}: not supported "
                        "yet (the all-to-all inside attention is untested under "
                        "torch.compile); set train.compile=false",
                        ("train.compile", "parallel.sequence_parallel_size"))]
    return []


def _batch_layout(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    t = s["train"]
    problem = batch_layout_problem(t.global_batch_size, t.micro_batch_size,
                                   _dp_world(s, world_size) or 1)
    return [Problem(problem, ("train.global_batch_size", "train.micro_batch_size"))] \
        if problem else []


def _objective_fits_family(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    d, m = s["data"], s["model"]
    want = objective_for(d).family
    if m.family == want:
        return []
    other = next(o.name for o in all_objectives() if o.family == m.family)
    return [Problem(f"data.objective {d.objective} needs model.family {want}, not {m.family}: "
                    f"set data.objective={other} or use a {want} model",
                    ("data.objective", "model.family"))]


def _lengths_fit_model(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    """Every sequence the loader makes fits the model's positions (model.max_seq_len)."""
    return objective_for(s["data"]).model_problems(s["model"].max_seq_len)


def _eval_batch_fits(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    e, t, world = s["eval"], s["train"], _dp_world(s, world_size) or 1
    if not e.enabled or e.max_samples is None:
        return []
    problem = eval_batch_problem("eval.max_samples", e.max_samples, t.micro_batch_size, world)
    return [Problem(f"{problem}: raise it to at least {t.micro_batch_size * world}, or turn "
                    "evaluation off with eval.every_steps=0 eval.at_end=false",
                    ("eval.max_samples", "train.micro_batch_size"))] if problem else []


def _objective_eval_fits(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    """The objective's own evaluation settings (seq2seq: eval.bleu_samples)."""
    return objective_for(s["data"]).eval_problems(s["eval"], s["train"].micro_batch_size,
                                                  _dp_world(s, world_size) or 1)


def _overflow_check_needs_bf16(s: dict[str, Any], world_size: int | None) -> list[Problem]:
    if s["deepspeed"].check_grad_overflow and s["precision"] != "bf16":
        return [Problem(f"deepspeed.check_grad_overflow applies to precision bf16 only "
                        f"(precision is {s['precision']})",
                        ("deepspeed.check_grad_overflow", "precision"))]
    return []


# Each check runs when the sections it reads are valid on their own.
CROSS_CHECKS = [(("schedule", "train"), _schedule_fits), (("train",), _batch_layout),
                (("data", "model"), _objective_fits_family), (("data", "model"), _lengths_fit_model),
                (("eval", "train"), _eval_batch_fits),
                (("eval", "train", "data"), _objective_eval_fits),
                (("deepspeed", "precision"), _overflow_check_needs_bf16),
                (("init_from",), _init_from_suffix),
                (("parallel", "model", "data"), _sequence_parallel_fits),
                (("parallel", "train"), _sequence_parallel_no_compile)]


def _valid_sections(data: dict[str, Any], bad: set[str]) -> dict[str, Any]:
    """Every top-level entry of `data` that validates by itself (defaults for absent ones)."""
    out = {}
    for name, info in RunConfig.model_fields.items():
        if name in bad:
            continue
        if name not in data:
            if not info.is_required():
                out[name] = info.get_default(call_default_factory=True)
            continue
        try:
            out[name] = TypeAdapter(info.annotation).validate_python(data[name])
        except ValidationError:
            continue
    return out


@dataclass
class Checked:
    """What `check_run_config` found: the config when it is valid, every section that is valid
    by itself (for later checks), the problems and the parsed overrides."""

    cfg: RunConfig | None
    sections: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    file_data: dict[str, Any] = field(default_factory=dict)

    def error(self, source: str | None) -> ConfigError:
        return ConfigError(attribute(self.problems, self.overrides, self.file_data), source)


FROM_INIT = "from_init"


def model_from_init(data: dict[str, Any], implied: bool = False,
                    ) -> tuple[dict[str, Any], list[Problem]]:
    """`model: {from_init: true}` — or no model section in the YAML at all (`implied`) while
    init_from is set — takes the architecture from the init_from file (the model config that
    `arrowtrain export` and `arrowtrain import-hf` record in its metadata); other keys in the
    section go over it (dropout and the like may differ; the pre-flight refuses a key that
    changes the file's shapes or what they compute). Returns the mapping with the model filled
    in, and the problems."""
    model = data.get("model")
    section = model if isinstance(model, dict) else {}
    flag = section.get(FROM_INIT, None if "model" in data and not implied else True)
    over = {k: v for k, v in section.items() if k != FROM_INIT}
    plain = {**data, "model": over} if FROM_INIT in section else data
    if flag is None or flag is False:
        return plain, []
    if flag is not True:
        return plain, [Problem(f"model.from_init: expected true or false, got {flag!r}",
                               ("model.from_init",))]
    init = data.get("init_from")
    if init is None:
        if FROM_INIT not in section:
            return data, []  # no model section and no init_from: "model: required key"
        return plain, [Problem("model.from_init: true needs init_from: FILE.safetensors (the "
                               "file whose architecture the run takes)", ("model.from_init",))]
    from pretrain.train.init_from import InitFileError, read_init_file

    try:
        theirs, _ = read_init_file(Path(str(init)))
    except InitFileError as e:
        return {**data, "model": FROM_INIT}, [Problem(
            f"{e} (the run takes its model section from this file)", ("init_from",))]
    return {**data, "model": {**theirs.model_dump(mode="json"), **over}}, []


def validate_run_data(data: dict[str, Any], world_size: int | None = None,
                      implied_from_init: bool = False) -> Checked:
    """Validate a resolved mapping: every section's problems and the cross checks."""
    data, init_problems = model_from_init(data, implied_from_init)
    checked = _validate(data, world_size)
    if data.get("model") == FROM_INIT:  # the file was unreadable: say that, not "model: ..."
        checked.problems = [p for p in checked.problems if p.keys[:1] != ("model",)]
    checked.problems = init_problems + checked.problems
    if checked.problems:
        checked.cfg = None
    return checked


def _validate(data: dict[str, Any], world_size: int | None = None) -> Checked:
    try:
        cfg, problems = RunConfig.model_validate(data), []
    except ValidationError as err:
        cfg, problems = None, validation_problems(err, model=RunConfig)
    bad = {key.split(".")[0] for p in problems for key in p.keys}
    sections = _valid_sections(data, bad) if cfg is None else dict(cfg)
    for needs, check in CROSS_CHECKS:
        if all(n in sections for n in needs):
            problems += check(sections, world_size)
    return Checked(cfg if not problems else None, sections, problems)


def check_run_config(path: str | Path, overrides: Iterable[str] = (),
                     world_size: int | None = None) -> Checked:
    """Read `path` (with `base:` files), apply the overrides, validate; problems collected,
    not raised. A file that cannot be read is one problem next to the malformed overrides."""
    parsed, bad_overrides = parse_overrides(overrides)
    try:
        file_data = load_yaml(path)
    except ConfigError as err:
        where = "" if err.source in (None, str(Path(path).resolve())) else f"{err.source}: "
        problems = [Problem(where + p) for p in err.problems] + bad_overrides
        return Checked(None, {}, problems, parsed)
    checked = validate_run_data(apply_overrides(file_data, parsed), world_size,
                                implied_from_init="model" not in file_data)
    checked.problems = bad_overrides + checked.problems
    checked.overrides, checked.file_data = parsed, file_data
    if bad_overrides:
        checked.cfg = None
    return checked


def build_run_config(data: dict[str, Any], world_size: int | None = None,
                     source: str | None = None) -> RunConfig:
    """Validate a resolved mapping; every problem of every section in one ConfigError."""
    checked = validate_run_data(data, world_size)
    if checked.problems:
        raise checked.error(source)
    return checked.cfg


def load_run_config(path: str | Path, overrides: Iterable[str] = (),
                    world_size: int | None = None) -> RunConfig:
    """Read `path` (with `base:` files), apply `key=value` overrides, validate everything; one
    ConfigError lists every problem and says which came from the command line.

    `world_size`, when known (the launcher knows it before starting processes), adds the check
    that the global batch divides evenly into micro-batches on every rank."""
    checked = check_run_config(path, overrides, world_size)
    if checked.problems:
        raise checked.error(str(path))
    return checked.cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain-YAML/JSON form of the resolved config (paths as strings)."""
    return cfg.model_dump(mode="json")
