"""Checkpoint stall (issue 21): how long a save holds the training loop, synchronous against
`checkpoint.async`, and what saving every N steps costs the run — in one run, same model.

    python benchmarks/checkpoint_stall.py                      # gpt2-124m fp32 ZeRO-1: ~2 GB
    python benchmarks/checkpoint_stall.py --every 20 --saves 3 --model gpt2-350m

Four trainers on one process (world size 1), each `python -m pretrain.train`'s Trainer on the
same model and data: `none` (no saves), `sync` and `async` (a save every --every steps), then
`none` again (the baseline is their mean; how far apart they are is the noise floor). Each is
warmed up, then timed over --saves x --every steps. Per save: checkpoint_blocking_ms (the
time the loop was held, as the trainer logs it to metrics.jsonl) and checkpoint_write_ms (save
step to committed). Slowdown = a mode's seconds for the timed steps / the baseline's - 1.
The async run's last write is waited for after the timed steps (printed as final_wait_ms).
Targets on a CPU with a >= 1 GB checkpoint: async blocked <= 0.2 x sync; async slowdown <= 3%
at --every 20.
The checkpoint folders go to --dir (default: a temp folder; the disk it is on matters).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_name  # noqa: E402
from benchmarks.train_throughput import (  # noqa: E402
    free_memory,
    make_data,
    model_vocab,
    new_trainer,
    release,
)
from pretrain.logs import setup_logging  # noqa: E402
from pretrain.train.distenv import resolve_dist_env  # noqa: E402
from pretrain.train.engine import init_distributed  # noqa: E402

MODES = {"none": [], "sync": ["checkpoint.async=false"], "async": ["checkpoint.async=true"]}
ORDER = ("none", "sync", "async", "none_again")  # the baseline before and after: its spread


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-124m", help="configs/model/NAME.yaml")
    p.add_argument("--batch", type=int, default=1, help="samples per step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16_autocast"])
    p.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2, 3])
    p.add_argument("--every", type=int, default=20, help="steps between saves")
    p.add_argument("--saves", type=int, default=2, help="saves in the timed steps")
    p.add_argument("--warmup", type=int, default=2, help="steps before timing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--dir", type=Path, help="where the run folders go (default: a temp dir)")
    args = p.parse_args(argv)
    # what train_throughput's config builder reads
    args.vocab_size, args.num_workers, args.compile, args.override = None, 0, False, []
    return args


def measure(args, tmp: Path, label: str, device, denv) -> dict:
    """One trainer: warm up, time --saves x --every steps, collect its save rows."""
    mode = label.removesuffix("_again")
    every = args.every if mode != "none" else 10**9
    overrides = [*MODES[mode], f"checkpoint.every_steps={every}", "checkpoint.keep_last=1",
                 "train.sync_every_steps=1000", f"deepspeed.zero_stage={args.zero_stage}",
                 f"precision={args.precision}"]
    trainer = new_trainer(args, tmp, label, overrides, device, denv)
    start = args.warmup  # < every: the timed steps hold --saves saves
    trainer.run(until=start)
    steps = args.saves * args.every
    t0 = time.perf_counter()
    trainer.run(until=start + steps)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.wait_for_checkpoint()
    final_wait_ms = (time.perf_counter() - t1) * 1e3
    path = trainer.metrics.path
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = [r for r in lines if "checkpoint_step" in r]
    saves = [json.loads(r) for r in rows]
    size = trainer.ckpt_bytes
    release(trainer)
    shutil.rmtree(tmp / f"run-{label}", ignore_errors=True)
    out = {"seconds": round(seconds, 2), "steps": steps, "checkpoint_bytes": size,
           "step_time_ms": round(seconds / steps * 1e3, 1),
           "blocking_ms": [s["checkpoint_blocking_ms"] for s in saves],
           "write_ms": [s["checkpoint_write_ms"] for s in saves]}
    if mode == "async":
        out["final_wait_ms"] = round(final_wait_ms, 1)
    return out


def summarise(results: dict) -> dict:
    base = statistics.mean([results["none"]["seconds"], results["none_again"]["seconds"]])
    out = {"baseline_spread": round(results["none_again"]["seconds"]
                                    / results["none"]["seconds"] - 1, 4)}
    for mode in ("sync", "async"):
        r = results[mode]
        out[mode] = {"blocking_ms_per_save": round(statistics.mean(r["blocking_ms"]), 1),
                     "slowdown": round(r["seconds"] / base - 1, 4)}
    out["blocked_ratio_async_vs_sync"] = round(out["async"]["blocking_ms_per_save"]
                                               / out["sync"]["blocking_ms_per_save"], 4)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup_logging()
    logging.getLogger("pretrain").setLevel(logging.WARNING)
    denv = resolve_dist_env()
    device = init_distributed(denv)
    tmp = Path(tempfile.mkdtemp(prefix="ckpt_stall_", dir=args.dir))
    make_data(tmp / "data", model_vocab(args), 400_000)
    results = {}
    for label in ORDER:
        results[label] = measure(args, tmp, label, device, denv)
        free_memory()
        print(f"{label:10s}: {results[label]}", flush=True)
    summary = summarise(results)
    print(f"\ndevice: {device_name(device)}; disk: {tmp}; torch {torch.__version__}")
    print(f"model {args.model}, {args.precision}, ZeRO-{args.zero_stage}, a save every "
          f"{args.every} steps, {args.saves} saves timed")
    for mode in ("sync", "async"):
        s = summary[mode]
        print(f"{mode:5s}: blocked {s['blocking_ms_per_save']:9.1f} ms per save, "
              f"slowdown {s['slowdown']:+.1%}")
    print(f"async blocked / sync blocked: {summary['blocked_ratio_async_vs_sync']:.3f}; "
          f"baseline (no saves) measured before and after: {summary['baseline_spread']:+.1%} "
          "apart (the noise floor of the slowdowns)")
    if device.type == "cpu":
        print("no GPU here: the GPU path (device-to-host copy, pinned staging) not measured")
    print(json.dumps({"benchmark": "checkpoint_stall", "device": device_name(device),
                      "model": args.model, "precision": args.precision,
                      "zero_stage": args.zero_stage, "every_steps": args.every,
                      "saves": args.saves, **results, "summary": summary}))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
