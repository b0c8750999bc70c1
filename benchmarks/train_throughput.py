"""Trainer benchmark (issue 9): tokens/s and MFU of our trainer against the strongest plain
PyTorch loop we can write on the same model, in the same process, on whatever device is here.

    python benchmarks/train_throughput.py                   # CPU: gpt-tiny, batch 8 x 128, fp32
    python benchmarks/train_throughput.py --model gpt2-124m --batch 32 --seq-len 1024 \\
        --precision bf16_autocast --zero-stage 2             # GPU (compile on by default there)
    python benchmarks/train_throughput.py --levers all      # one row per DeepSpeed/trainer lever

ours   = the real trainer path: the run config configs/MODEL.yaml (or gpt2-124m.yaml /
         transformer-base.yaml with MODEL's model section), sized by the flags, `Trainer` on one
         process as `python -m pretrain.train` builds it, and `Trainer.run` — loader, DeepSpeed
         engine, sync steps, logging every 10 steps — timed in rounds of --steps steps (each
         round ends with a sync, like the plain loop's).
plain  = the same model (same config, same seed): torch.compile (when on), bf16 autocast (for
         the bf16 precisions), torch AdamW fused, the same weight-decay groups and grad-norm
         clipping, no host sync per step, batches already on the device (no loader at all).
Rounds alternate plain / ours so a busy machine slows both alike; medians are reported. With
--levers, each lever's trainer is measured in rounds alternating with the same plain loop.
MFU = tokens/s x pretrain.model.flops_per_token / the GPU's bf16 peak (none for a CPU).
Encoder-decoders (transformer-base, t5-base, ...) train on span-corruption batches (source
--seq-len, decoder_input_ids and targets from the loader); tokens are source tokens.
Random tokens, vocabulary --vocab-size (default: the model's, rounded up to 64; gpt-tiny 8192).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from benchmarks.common import device_name  # noqa: E402
from pretrain.configlib import ConfigError, apply_overrides, load_yaml  # noqa: E402
from pretrain.data import train_batches  # noqa: E402
from pretrain.data.synthetic import random_docs, write_folder  # noqa: E402
from pretrain.exit_codes import EXIT_OK  # noqa: E402
from pretrain.logs import setup_logging  # noqa: E402
from pretrain.model import build_model, mfu, padded_vocab_size, peak_flops  # noqa: E402
from pretrain.train.config import build_run_config  # noqa: E402
from pretrain.train.distenv import resolve_dist_env  # noqa: E402
from pretrain.train.engine import init_distributed, param_groups  # noqa: E402
from pretrain.train.loop import Trainer  # noqa: E402
from pretrain.train.preflight import resolve_paths  # noqa: E402

SENTINELS = 100
# name -> overrides, relative to the flags' run. "old-defaults" is the trainer before issue 9
# (DeepSpeed's timer and bf16 overflow check on, a host sync every step, Python's own GC).
LEVERS = {
    "defaults": [],
    "bf16": ["precision=bf16"],
    "bf16_autocast": ["precision=bf16_autocast"],
    "fp32": ["precision=fp32"],
    "timer-on": ["deepspeed.throughput_timer=true"],
    "overflow-check-on": ["precision=bf16", "deepspeed.check_grad_overflow=true"],
    "sync-every-step": ["train.sync_every_steps=1"],
    "python-gc-auto": ["deepspeed.python_gc_every_steps=0"],
    "zero0": ["deepspeed.zero_stage=0"],
    "zero1": ["deepspeed.zero_stage=1"],
    "zero2": ["deepspeed.zero_stage=2"],
    "old-defaults": ["deepspeed.throughput_timer=true", "train.sync_every_steps=1",
                     "deepspeed.python_gc_every_steps=0", "logging.every_steps=1"],
    "old-defaults-bf16": ["precision=bf16", "deepspeed.check_grad_overflow=true",
                          "deepspeed.throughput_timer=true", "train.sync_every_steps=1",
                          "deepspeed.python_gc_every_steps=0", "logging.every_steps=1"],
    "compile-off": ["train.compile=false"],
}




def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- config and data --------------------------------------------------------------------

def base_run_config(model: str) -> tuple[dict, Path]:
    """The shipped run config for `model`, or the family's (its model section replaced)."""
    model_yaml = load_yaml(REPO / "configs" / "model" / f"{model}.yaml")
    own = REPO / "configs" / f"{model}.yaml"
    if own.is_file():
        return load_yaml(own), own
    family = "transformer-base" if model_yaml["family"] == "encdec" else "gpt2-124m"
    path = REPO / "configs" / f"{family}.yaml"
    raw = load_yaml(path)
    raw["model"] = model_yaml
    return raw, path


def model_vocab(args) -> int:
    """--vocab-size, else the model file's rounded up to 64 (50257 -> 50304), else 8192."""
    if args.vocab_size:
        return args.vocab_size
    vocab = load_yaml(REPO / "configs" / "model" / f"{args.model}.yaml").get("vocab_size")
    return padded_vocab_size(vocab) if vocab else 8192


def run_overrides(args, data: Path, run_dir: Path, encdec: bool) -> list[str]:
    """The benchmark's sizing of the run config (then --override, then the lever's)."""
    length = [f"data.input_length={args.seq_len}"] if encdec else [f"data.seq_len={args.seq_len}"]
    out = [f"run_dir={run_dir}", f"data.path={data}", *length, "resume=never",
           f"data.pin_memory={str(torch.cuda.is_available()).lower()}",
           f"data.num_workers={args.num_workers}",
           f"train.global_batch_size={args.batch}", f"train.micro_batch_size={args.batch}",
           "train.max_steps=1000000", "checkpoint.every_steps=1000000000",
           "checkpoint.save_at_end=false", "eval.every_steps=0", "eval.at_end=false",
           "logging.every_steps=10", "logging.progress_bar=false", "logging.wandb.mode=disabled",
           "model.dropout=0.0", f"train.compile={str(args.compile).lower()}"]
    if args.precision:
        out.append(f"precision={args.precision}")
    if args.zero_stage is not None:
        out.append(f"deepspeed.zero_stage={args.zero_stage}")
    return out + list(args.override)


def build_config(args, data: Path, run_dir: Path, lever: list[str]):
    raw, source = base_run_config(args.model)
    raw["model"]["vocab_size"] = model_vocab(args)
    raw["model"]["max_seq_len"] = max(args.seq_len, raw["model"]["max_seq_len"])
    encdec = raw["model"]["family"] == "encdec"
    raw = apply_overrides(raw, run_overrides(args, data, run_dir, encdec) + lever)
    return build_run_config(raw, world_size=1, source=str(source))


def make_data(folder: Path, vocab: int, tokens: int) -> None:
    rng = np.random.default_rng(0)
    high = vocab - SENTINELS
    write_folder(folder, {"train": [random_docs(rng, tokens, 600, 2, high)],
                          "val": [random_docs(rng, 20_000, 600, 2, high)]},
                 vocab_size=vocab, sentinel_ids=list(range(high, vocab)))


# ---- the two loops ------------------------------------------------------------------------

class Plain:
    """The reference: a hand-written loop as fast as we know how to write it."""

    def __init__(self, cfg, trainer: Trainer, device: torch.device, compile_: bool):
        torch.manual_seed(cfg.seed)
        self.device = device
        self.model = build_model(cfg.model).to(device).train()
        o = cfg.optim
        self.opt = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr,
                                     betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
        self.fwd = torch.compile(self.model) if compile_ else self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.clip = o.grad_clip
        dtype = {"bf16": torch.bfloat16, "bf16_autocast": torch.bfloat16,
                 "fp16": torch.float16}.get(cfg.precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else \
            contextlib.nullcontext
        it = train_batches(trainer.src, cfg.train.global_batch_size,
                           cfg.train.micro_batch_size, 0, 1, 0)
        self.batches = [{k: v.to(device) for k, v in next(it).items()} for _ in range(4)]
        self.i = 0

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        with self.autocast():
            loss = self.fwd(**batch)["loss"]
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        sync(self.device)


def ours_run(trainer: Trainer, steps: int) -> None:
    trainer.run(until=trainer.step + steps)  # ends with a sync step


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - t0) / steps


def release(trainer: Trainer) -> None:
    """Close a trainer and its engine (the caller then drops its references and frees)."""
    trainer.close(EXIT_OK)  # its scratch run folder records a finished exit
    with contextlib.suppress(Exception):
        trainer.engine.destroy()


def free_memory() -> None:
    """After the last reference to a trainer / plain loop is gone: GPU memory back, compiled
    graphs dropped (the next model compiles anew; inductor's on-disk cache still helps)."""
    gc.collect()
    if torch.cuda.is_available():
        torch._dynamo.reset()
        torch.cuda.empty_cache()


# ---- measurements --------------------------------------------------------------------------

def figures(seconds_per_step: float, tokens: int, fpt: int, device) -> dict:
    tps = tokens / seconds_per_step
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    return {"step_time_ms": round(seconds_per_step * 1e3, 2), "tokens_per_sec": round(tps),
            "mfu": round(mfu(tps, fpt, 1, peak=peak), 4) if peak else None}


def new_trainer(args, tmp: Path, label: str, lever: list[str], device, denv) -> Trainer:
    cfg = build_config(args, tmp / "data", tmp / f"run-{label}", lever)
    # no memory_peak_bytes: on CPU its dispatch mode would slow the first steps it times
    return Trainer(resolve_paths(cfg), denv, device, measure_memory=False)


def tokens_per_step(trainer: Trainer) -> int:
    return (trainer.gas * trainer.cfg.train.micro_batch_size
            * trainer.objective.tokens_per_sample)


def alternate(args, trainer: Trainer, plain: Plain | None) -> tuple[float, float | None]:
    """Median seconds per step of ours and plain, warmed up, rounds alternating."""
    ours_run(trainer, args.warmup)
    ours_s, plain_s = [], []
    run = lambda n, t=trainer: ours_run(t, n)  # noqa: E731
    for _ in range(args.rounds):
        if plain:
            plain_s.append(timed(plain.run, args.steps))
        ours_s.append(timed(run, args.steps))
    return statistics.median(ours_s), statistics.median(plain_s) if plain else None


def pair_figures(trainer: Trainer, ours_sps: float, plain_sps: float | None, device) -> dict:
    tokens, fpt = tokens_per_step(trainer), trainer.flops_per_token
    out = {"config": describe(trainer.cfg), "tokens_per_step": tokens, "flops_per_token": fpt,
           "ours": figures(ours_sps, tokens, fpt, device)}
    if plain_sps:
        out["plain"] = figures(plain_sps, tokens, fpt, device)
        out["ratio_vs_plain"] = round(plain_sps / ours_sps, 3)
    return out


def describe(cfg) -> dict:
    ds = cfg.deepspeed
    return {"precision": cfg.precision, "zero_stage": ds.zero_stage,
            "compile": cfg.train.compile, "throughput_timer": ds.throughput_timer,
            "check_grad_overflow": ds.check_grad_overflow,
            "sync_every_steps": cfg.train.sync_every_steps,
            "python_gc_every_steps": ds.python_gc_every_steps,
            "logging_every_steps": cfg.logging.every_steps}


def measure_pair(args, tmp: Path, device, denv) -> tuple[dict, Plain | None]:
    """ours vs plain on the flags' configuration; the plain loop is returned for the levers."""
    trainer = new_trainer(args, tmp, "main", [], device, denv)
    plain = None if args.no_plain else Plain(trainer.cfg, trainer, device, args.compile)
    if plain:
        plain.run(args.warmup)
    out = pair_figures(trainer, *alternate(args, trainer, plain), device)
    release(trainer)
    del trainer
    free_memory()
    return out, plain


def measure_levers(args, tmp: Path, device, denv, plain: Plain | None, emit) -> list[dict]:
    """Each lever: a fresh trainer with the lever's overrides, measured in rounds alternating
    with the same plain loop (so each ratio comes from the same minutes). A lever whose keys
    this config does not know is reported, not fatal. `emit(rows)` after each lever (a JSON
    line: what a killed run leaves behind)."""
    rows = []
    for name, overrides in lever_list(args):
        try:
            trainer = new_trainer(args, tmp, name, overrides, device, denv)
        except (ConfigError, ValueError) as e:
            rows.append({"lever": name, "overrides": overrides,
                         "error": str(e).splitlines()[-1].strip()})
            print(f"lever {name}: not run ({rows[-1]['error']})", flush=True)
            emit(rows)
            continue
        fig = pair_figures(trainer, *alternate(args, trainer, plain), device)
        row = {"lever": name, "overrides": overrides, "config": fig["config"], **fig["ours"]}
        if "ratio_vs_plain" in fig:
            row.update(ratio_vs_plain=fig["ratio_vs_plain"],
                       plain_tokens_per_sec=fig["plain"]["tokens_per_sec"])
        rows.append(row)
        print(f"lever {name:18s} {row['tokens_per_sec']:>10,} tokens/s  "
              f"ratio {row.get('ratio_vs_plain')}", flush=True)
        release(trainer)
        del trainer
        free_memory()
        emit(rows)
    return rows


def compile_levers() -> list[tuple[str, list[str]]]:
    """One lever per value of every `train.compile*` key that takes a choice (e.g. where to
    compile, if this checkout's config has such a key); [] when `compile` is only on/off."""
    import typing

    from pretrain.train.config import TrainConfig

    out = []
    for name, field in TrainConfig.model_fields.items():
        if not name.startswith("compile"):
            continue
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            for choice in typing.get_args(arg) if typing.get_origin(arg) is typing.Literal \
                    else ():
                out.append((f"{name}={choice}", [f"train.{name}={choice}"]))
    return out


def lever_list(args) -> list[tuple[str, list[str]]]:
    chosen = []
    if args.levers:
        names = list(LEVERS) if args.levers == "all" else args.levers.split(",")
        unknown = [n for n in names if n not in LEVERS and n != "compile-scopes"]
        if unknown:
            sys.exit(f"--levers: unknown lever(s) {', '.join(unknown)}; known: "
                     f"{', '.join(LEVERS)}, compile-scopes")
        for n in names:
            chosen += compile_levers() if n == "compile-scopes" else [(n, LEVERS[n])]
    for spec in args.lever:  # NAME:KEY=VAL,KEY=VAL
        name, _, kv = spec.partition(":")
        chosen.append((name, [x for x in kv.split(",") if x]))
    return chosen


# ---- main ----------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    p.add_argument("--model", default="gpt-tiny", help="configs/model/NAME.yaml")
    p.add_argument("--batch", type=int, default=8, help="samples per step (micro = global)")
    p.add_argument("--seq-len", type=int, default=128, help="decoder T / encoder source S")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16_autocast", "fp16"],
                   help="default: the run config's")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3],
                   help="default: the run config's")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=gpu,
                   help="torch.compile in both loops (default: on with a GPU)")
    p.add_argument("--vocab-size", type=int, help="default: the model's, rounded up to 64")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (compiles)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--num-workers", type=int, default=1, help="loader worker processes")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override for both loops' model and for ours (repeatable)")
    p.add_argument("--no-plain", action="store_true", help="ours only (e.g. MFU of a 1B run)")
    p.add_argument("--levers", help=f"'all' or a comma list of: {', '.join(LEVERS)}, "
                   "compile-scopes (one row per choice of a train.compile* key, if any)")
    p.add_argument("--lever", action="append", default=[], metavar="NAME:KEY=VAL,KEY=VAL",
                   help="an extra lever row (repeatable); unknown keys are reported, not fatal")
    return p.parse_args(argv)


def summary_json(args, device, pair: dict, levers: list[dict]) -> str:
    hw = device_name(device)
    return json.dumps({"benchmark": "train_throughput", "device": hw,
                       "gpu": hw if device.type == "cuda" else None, "torch": torch.__version__,
                       "model": args.model, "batch": args.batch, "seq_len": args.seq_len,
                       **pair, "levers": levers})


def report(args, device, pair: dict, levers: list[dict]) -> None:
    c = pair["config"]
    print(f"\ndevice: {device_name(device)}; torch {torch.__version__}")
    print(f"model {args.model}, batch {args.batch} x {args.seq_len}, world size 1, "
          f"{c['precision']}, ZeRO-{c['zero_stage']}, compile {c['compile']}")
    for who in ("plain", "ours"):
        if who in pair:
            f = pair[who]
            mfu_s = f"{f['mfu']:.1%}" if f["mfu"] is not None else "n/a (no GPU peak)"
            print(f"{who:5s}: {f['step_time_ms']:9.2f} ms/step {f['tokens_per_sec']:>12,} "
                  f"tokens/s  MFU {mfu_s}")
    if "ratio_vs_plain" in pair:
        print(f"ratio ours / plain: {pair['ratio_vs_plain']:.3f}")
    if device.type == "cpu":
        print("no GPU here: GPU figures (MFU, the gpt2-124m/350m comparison) not measured")
    print(summary_json(args, device, pair, levers))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup_logging()
    logging.getLogger("pretrain").setLevel(logging.WARNING)  # our own rows only
    denv = resolve_dist_env()
    device = init_distributed(denv)
    tmp = Path(tempfile.mkdtemp(prefix="train_bench_"))
    per_step = args.batch * (args.seq_len + 1)
    make_data(tmp / "data", model_vocab(args),
              min(max(4 * per_step * (args.warmup + args.steps), 400_000), 20_000_000))
    pair, plain = measure_pair(args, tmp, device, denv)
    print(summary_json(args, device, pair, []), flush=True)  # kept if a later part is killed
    levers = []
    if args.levers or args.lever:
        emit = lambda rows: print(summary_json(args, device, pair, rows), flush=True)  # noqa: E731
        levers = measure_levers(args, tmp, device, denv, plain, emit)
    del plain
    report(args, device, pair, levers)
    return EXIT_OK


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
