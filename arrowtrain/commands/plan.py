"""arrowtrain plan --config X [KEY=VALUE ...]: will a run fit, how long will it take, what will it
cost — before the job starts, without a GPU and without torch (well under 2 s).

Memory per GPU at the step's peak, itemised: parameters, gradients, optimizer states (by
precision, ZeRO stage, offload), activations (micro-batch, sequence length, checkpointing
policy, loss kind, attention kernel), DeepSpeed's buffers, and an allowance for fragmentation
and the CUDA context; whether it fits, the largest micro-batch that fits, and what to change
when it does not (cheapest first: micro-batch, checkpointing, ZeRO stage, offload, more GPUs).
Time: tokens/s from the trainer's own FLOPs counter at an assumed MFU, step time, time to
--tokens, GPU-hours, cost. Formulas: the ZeRO paper (Rajbhandari et al. 2020), Korthikanti et
al. 2022 (activations), "Transformer Math 101" (EleutherAI: 6·N·D, +1/3 with recomputation);
docs/plan.md. The run itself logs the plan's figure next to its measured peak
(memory_planned_bytes / memory_peak_bytes in metrics.jsonl; `arrowtrain launch status`).

A model config (configs/model/*.yaml: `family:` at the top) is planned as a run with
RECIPE's settings; override any of them (train.micro_batch_size=4 deepspeed.zero_stage=3 ...).
--json prints exactly one JSON object on stdout; warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from arrowtrain.cmdline import command_parser
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

# A model config alone is planned with these run settings (GPT-2-small-like recipe).
RECIPE: dict[str, Any] = {
    "run_dir": "runs/plan", "precision": "bf16_autocast",
    "train": {"max_steps": 100_000, "global_batch_size": 512, "micro_batch_size": 8},
    "deepspeed": {"zero_stage": 2}}
GiB = 2**30


def parse_args(argv: list[str] | None, prog: str | None) -> argparse.Namespace:
    from pretrain.train.plan.hardware import DEFAULT_GPU, GPUS

    p = command_parser(prog or "arrowtrain plan", __doc__)
    p.add_argument("--config", required=True, help="run config YAML, or a model config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.micro_batch_size=8 deepspeed.zero_stage=3")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpus", type=int, help="GPUs in all (default 1)")
    where.add_argument("--nodes", type=int, help="nodes (with --gpus-per-node)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (with --nodes)")
    p.add_argument("--gpu-memory", help="memory per GPU, e.g. 80GB (GB = GiB = 2^30 bytes, as "
                   "GPUs are sold); default: the --gpu's")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--gpu", choices=list(GPUS), help=f"GPU model (default {DEFAULT_GPU}): "
                      + "; ".join(f"{k} = {v[0]}" for k, v in GPUS.items()))
    kind.add_argument("--peak-tflops", type=float,
                      help="dense bf16 peak TFLOP/s per GPU, for a GPU not in the list "
                      "(with --gpu-memory)")
    p.add_argument("--mfu", type=float, default=0.4,
                   help="model FLOPs utilisation to assume, as the trainer logs it (default 0.4)")
    p.add_argument("--tokens", type=float,
                   help="tokens to train on (default: train.max_steps × tokens per step)")
    p.add_argument("--price-per-gpu-hour", type=float, help="price of one GPU-hour: adds cost")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, nothing else")
    args = p.parse_intermixed_args(argv)
    _check_args(p, args)
    return args


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.nodes is not None and args.gpus_per_node is None:
        p.error("--nodes needs --gpus-per-node")
    if args.gpus_per_node is not None and args.nodes is None:
        p.error("--gpus-per-node needs --nodes (or give --gpus)")
    for name in ("gpus", "nodes", "gpus_per_node"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.peak_tflops is not None and (args.peak_tflops <= 0 or args.gpu_memory is None):
        p.error("--peak-tflops needs a positive value and --gpu-memory")
    if not 0 < args.mfu <= 1:
        p.error("--mfu must be in (0, 1]")
    if args.tokens is not None and args.tokens <= 0:
        p.error("--tokens must be positive")


def hardware(args: argparse.Namespace):
    from pretrain.train.plan.hardware import DEFAULT_GPU, GPUS, Hardware, parse_bytes

    gpus = args.nodes * args.gpus_per_node if args.nodes else (args.gpus or 1)
    memory = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    if args.peak_tflops is not None:
        return Hardware(gpus, memory, args.peak_tflops * 1e12,
                        f"GPU of {args.peak_tflops:g} TFLOP/s", args.gpus_per_node)
    gpu = args.gpu or DEFAULT_GPU
    hw = Hardware.named(gpu, gpus, memory, gpus_per_node=args.gpus_per_node)
    return hw if memory is None else hw.__class__(
        gpus, memory, hw.peak_flops, f"{GPUS[gpu][0].rsplit(' ', 1)[0]} with "
        f"{memory / GiB:g} GiB", args.gpus_per_node)


def _model_only(path: str) -> dict[str, Any] | None:
    """The run a model config stands for (RECIPE around it), or None for a run config."""
    from pretrain.configlib import load_yaml

    data = load_yaml(path)
    if "family" not in data:
        return None
    seq = int(data.get("max_seq_len") or 1024)
    lengths = {"seq_len": seq} if data["family"] == "decoder" else {
        "objective": "span_corruption", "input_length": seq}
    return {**RECIPE, "model": data, "data": {"path": "unused", **lengths}}


LAYOUT = ("train.global_batch_size", "train.micro_batch_size")


def load_config(args: argparse.Namespace):
    """The run config (model configs wrapped in RECIPE) with overrides; vocab_size filled from
    the data's manifest when the config leaves it to the tokenizer. A global batch that does not
    divide into the micro-batch is no error here (any micro-batch may be planned): the plan
    warns about it instead."""
    from pretrain.configlib import ConfigError, apply_overrides, attribute, parse_overrides
    from pretrain.train.config import RunConfig, check_run_config, validate_run_data

    wrapped = _model_only(args.config)
    if wrapped is None:
        checked = check_run_config(args.config, args.overrides)
    else:
        print(f"{args.config} is a model config: planned as a run with {json.dumps(RECIPE)} "
              "(override any key)", file=sys.stderr)
        parsed, bad = parse_overrides(args.overrides)
        checked = validate_run_data(apply_overrides(wrapped, parsed) if not bad else wrapped)
        checked.problems, checked.overrides, checked.file_data = \
            bad + checked.problems, parsed, wrapped
    problems = [p for p in checked.problems if p.keys != LAYOUT]
    if problems:
        raise ConfigError(attribute(problems, checked.overrides, checked.file_data),
                          args.config)
    cfg = checked.cfg or RunConfig.model_validate(
        apply_overrides(checked.file_data, checked.overrides))
    return cfg if cfg.model.vocab_size is not None else _fill_vocab(cfg)


def _fill_vocab(cfg):
    from data_tools.folder import read_manifest
    from data_tools.manifest import ManifestError
    from pretrain.configlib import ConfigError
    from pretrain.model.config import padded_vocab_size

    folder = cfg.data.folders()[0][0]
    try:
        vocab = read_manifest(Path(folder)).tokenizer.vocab_size
    except (ManifestError, OSError) as e:
        raise ConfigError([f"model.vocab_size is not set and the data's tokenizer cannot be "
                           f"read ({e}): give model.vocab_size=N"]) from None
    model = cfg.model.model_copy(update={"vocab_size": padded_vocab_size(vocab)})
    return cfg.model_copy(update={"model": model})


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    from pretrain.configlib import ConfigError
    from pretrain.train.plan import make_plan

    try:
        hw = hardware(args)
        cfg = load_config(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    plan = make_plan(cfg, hw, args.mfu, args.tokens, args.price_per_gpu_hour)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(plan, args.config)))
    else:
        sys.stdout.write(render(plan, args.config))
    return EXIT_OK


# ----------------------------------------------------------------------------- output

def as_json(plan, config: str) -> dict[str, Any]:
    t, hw, cfg = plan.time, plan.hardware, plan.cfg
    from pretrain.model.shapes import parameter_shapes

    params = sum(_prod(s) for s in parameter_shapes(cfg.model).values())
    return {
        "config": config, "gpus": hw.gpus, "gpu": hw.name, "gpu_memory_bytes": hw.memory_bytes,
        "memory_bytes_per_gpu": plan.memory.as_dict(),
        "memory_allocated_peak_bytes": plan.memory.allocated,
        "peak_moment": plan.memory.peak.moment, "fits": plan.fits,
        "micro_batch": cfg.train.micro_batch_size, "max_micro_batch": plan.max_micro_batch,
        "changes": [{"what": s.what, "overrides": list(s.overrides),
                     "total_bytes": s.total_bytes, "fits": s.fits} for s in plan.steps],
        "parameters": params, "flops_per_token": t.flops_per_token,
        "recompute_factor": round(t.recompute, 4), "mfu": plan.mfu,
        "peak_flops_per_gpu": hw.peak_flops, "tokens_per_sec": t.tokens_per_sec,
        "tokens_per_step": t.tokens_per_step, "step_time_s": t.step_time_s, "tokens": t.tokens,
        "hours": t.hours, "gpu_hours": t.gpu_hours, "cost": t.cost, "warnings": plan.warnings}


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _gib(n: int) -> str:
    return f"{n / GiB:8.2f} GiB"


MOMENTS = {"forward": "the loss's forward", "loss": "the start of backward",
           "backward": "the last block's backward", "step": "the optimizer step",
           "reduce": "the gradient all-reduce"}


def _memory_lines(plan) -> list[str]:
    cfg, mem = plan.cfg, plan.memory.as_dict()
    ac = cfg.train.activation_checkpointing
    notes = {"parameters": f"{cfg.precision} weights" + (
                 " + their bf16 copies under autocast" if cfg.precision == "bf16_autocast"
                 else ""),
             "optimizer_states": "offloaded to CPU" if cfg.deepspeed.offload_optimizer
             else "fp32 master + Adam moments" if mem["optimizer_states"] else "",
             "activations": f"micro-batch {cfg.train.micro_batch_size}, checkpointing "
                            f"{ac.mode}, loss {cfg.model.loss}",
             "fragmentation": "allowance: 10% + 1 GiB CUDA context (assumed)"}
    names = {"optimizer_states": "optimizer states", "deepspeed_buffers": "DeepSpeed buffers",
             "fragmentation": "fragmentation"}
    out = [f"memory per GPU (peak at {MOMENTS.get(plan.memory.peak.moment, '?')}):"]
    for key in ("parameters", "gradients", "optimizer_states", "activations",
                "deepspeed_buffers", "fragmentation"):
        out.append(f"  {names.get(key, key):<18}{_gib(mem[key])}   {notes.get(key, '')}".rstrip())
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    out.append(f"  {'total':<18}{_gib(mem['total'])}   of {plan.hardware.memory_bytes / GiB:g} "
               f"GiB: {verdict}")
    out.append(f"largest micro-batch that fits: {plan.max_micro_batch or 'none'}")
    return out


def _advice_lines(plan) -> list[str]:
    if not plan.steps:
        return [] if plan.fits else [
            "", "no number of GPUs makes it fit: checkpointing, ZeRO-3 and offload are on; "
            "shorten the sequence, use smaller DeepSpeed buckets (deepspeed.reduce_bucket_size) "
            "or a GPU with more memory"]
    out = ["", "to make it fit, cheapest first (each on top of the ones before):"]
    for s in plan.steps:
        mark = "fits" if s.fits else "not yet"
        out.append(f"  {s.what}: {' '.join(s.overrides)}  -> {s.total_bytes / GiB:.2f} GiB, "
                   f"{mark}")
    if not plan.steps[-1].fits:
        out.append("  nothing above fits, at any number of GPUs: shorten the sequence, use "
                   "smaller DeepSpeed buckets (deepspeed.reduce_bucket_size) or a bigger GPU")
    return out


def _time_lines(plan) -> list[str]:
    from pretrain.logs import human_duration

    t, hw = plan.time, plan.hardware
    cost = f"{t.cost:,.0f}" if t.cost is not None else "(give --price-per-gpu-hour)"
    return ["", f"time (MFU {plan.mfu:g} of {hw.peak_flops / 1e12:g} TFLOP/s bf16 per GPU, "
                f"{t.flops_per_token:,} FLOPs per token"
                + (f", ×{t.recompute:.2f} recomputation" if t.recompute != 1 else "") + "):",
            f"  tokens/s          {t.tokens_per_sec:,.0f}",
            f"  step time         {t.step_time_s:.3f} s ({t.tokens_per_step:,} tokens)",
            f"  tokens            {t.tokens:.3g}",
            f"  time              {human_duration(t.hours * 3600)} ({t.hours:,.1f} h)",
            f"  GPU-hours         {t.gpu_hours:,.0f}",
            f"  cost              {cost}"]


def render(plan, config: str) -> str:
    cfg, hw = plan.cfg, plan.hardware
    from pretrain.train.plan import grad_accum, lengths

    s, src = lengths(cfg)
    shape = f"{s} tokens" if not src else f"{src} source + {s} target tokens"
    P = cfg.parallel.sequence_parallel_size
    shape += f" (sequence parallel {P}: {s // P} per GPU)" if P > 1 else ""
    head = [f"plan: {config} on {hw.gpus} × {hw.name} ({hw.memory_bytes / GiB:g} GiB each)",
            f"  {cfg.model.family} {cfg.model.d_model}×{cfg.model.total_layers} layers, "
            f"{cfg.precision}, ZeRO-{cfg.deepspeed.zero_stage}"
            + (" + optimizer offload" if cfg.deepspeed.offload_optimizer else "")
            + f", micro-batch {cfg.train.micro_batch_size} × {shape}, "
            f"{grad_accum(cfg, hw.gpus, cfg.train.micro_batch_size)} accumulation step(s)", ""]
    lines = head + _memory_lines(plan) + _advice_lines(plan) + _time_lines(plan)
    return "\n".join(lines) + "\n"
