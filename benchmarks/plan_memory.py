"""`arrowtrain plan`'s memory prediction against measured peaks of real DeepSpeed engines.

    python benchmarks/plan_memory.py --ranks 2                 # the default grid on 2 CPU ranks
    python benchmarks/plan_memory.py --ranks 1 --zero 0 3 --micro 2 8 --seq 64 256

One launch of N ranks builds an engine per grid point in turn (ZeRO stage × activation
checkpointing × micro-batch × sequence length, a tiny GPT), runs `--steps` optimizer steps and
measures the step's peak the way the trainer does (pretrain/train/memcheck.py:
max_memory_allocated on a GPU, pretrain.memory.TensorMemory's tensor peak on CPU, from the
model's construction on), the highest over the ranks. Next to it the plan's figure
(pretrain.train.plan.memory_peak for the same config and device) and the error. Rank 0 prints
one JSON object per point, then a summary line {"rows": [...], "max_abs_error": ...}.
The device is named in every row. Without RANK in the environment the script starts its N
ranks itself (gloo on CPU, one process per GPU otherwise).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = {"family": "decoder", "max_seq_len": 256, "d_model": 64, "n_heads": 4, "n_layers": 2,
         "dropout": 0.0}  # configs/model/gpt-tiny.yaml's shape, dropout off (shared/notes/plan.md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="ranks to start (ignored under a launcher)")
    p.add_argument("--zero", type=int, nargs="+", default=[0, 2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--checkpointing", nargs="+", default=["none", "full"],
                   choices=["none", "full", "selective"])
    p.add_argument("--micro", type=int, nargs="+", default=[2, 4], help="micro-batch sizes")
    p.add_argument("--seq", type=int, nargs="+", default=[64, 128], help="sequence lengths")
    p.add_argument("--points", nargs="+", metavar="ZERO:CKPT:MICRO:SEQ",
                   help="measure these points (e.g. 0:none:2:64 3:full:4:128) instead of the "
                   "product of --zero, --checkpointing, --micro and --seq")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16_autocast"])
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per point")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--bucket", type=int, default=50_000,
                   help="deepspeed reduce/allgather bucket elements (the default 5e8 would be "
                   "2 GB at ZeRO-3 and hide everything else on a tiny model)")
    return p.parse_args(argv)


def run_config(args, zero: int, ac: str, micro: int, seq: int, world: int):
    from pretrain.train.config import build_run_config

    return build_run_config({
        "run_dir": "/tmp/plan_memory", "precision": args.precision,
        "model": {**MODEL, "vocab_size": args.vocab_size},
        "data": {"path": "unused", "seq_len": seq},
        "train": {"max_steps": args.steps, "micro_batch_size": micro,
                  "global_batch_size": micro * world * args.grad_accum,
                  "activation_checkpointing": ac},
        "deepspeed": {"zero_stage": zero, "reduce_bucket_size": args.bucket,
                      "allgather_bucket_size": args.bucket}})


def grid(args) -> list[tuple[int, str, int, int]]:
    if args.points:
        out = []
        for point in args.points:
            zero, ac, micro, seq = point.split(":")
            out.append((int(zero), ac, int(micro), int(seq)))
        return out
    return list(itertools.product(args.zero, args.checkpointing, args.micro, args.seq))


def measure(cfg, denv, device) -> int:
    """Peak bytes of building the model and engine and running cfg.train.max_steps steps."""
    import torch

    from pretrain.model import build_model
    from pretrain.train.engine import grad_accum_steps, initialize
    from pretrain.train.memcheck import PeakMemory, max_over_ranks

    tracker = PeakMemory(device, cpu_steps=cfg.train.max_steps)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tracker.start()
    try:
        model = build_model(cfg.model).to(device)
        engine, _ = initialize(model, cfg, denv.world_size)
        b, s = cfg.train.micro_batch_size, cfg.data.seq_len
        for _ in range(cfg.train.max_steps):
            for _ in range(grad_accum_steps(cfg, denv.world_size)):
                ids = torch.randint(0, cfg.model.vocab_size, (b, s + 1), device=device)
                loss = engine(input_ids=ids[:, :-1], targets=ids[:, 1:])["loss"]
                engine.backward(loss)
                engine.step()
                del loss
            tracker.step_done()
        peak = tracker.local_peak()
    finally:
        tracker.stop()
    del engine, model
    gc.collect()
    return max_over_ranks(peak, device)


def device_name(device) -> str:
    """The GPU's name, else the CPU model (benchmarks.common; each rank here runs one thread,
    so no thread count)."""
    import torch

    from benchmarks.common import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} (CPU)"


def rank_main(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from pretrain.train.distenv import resolve_dist_env
    from pretrain.train.engine import init_distributed
    from pretrain.train.plan import memory_peak

    denv = resolve_dist_env()
    device = init_distributed(denv)
    name, rows = device_name(device), []
    for zero, ac, micro, seq in grid(args):
        cfg = run_config(args, zero, ac, micro, seq, denv.world_size)
        measured = measure(cfg, denv, device)
        plan = memory_peak(cfg, denv.world_size, device=device.type)
        row = {"ranks": denv.world_size, "zero": zero, "checkpointing": ac, "micro": micro,
               "seq": seq, "precision": args.precision, "measured_bytes": measured,
               "planned_bytes": plan.allocated, "error": round(plan.allocated / measured - 1, 4),
               "planned_moment": plan.moment, "planned_parts": plan.as_dict(), "device": name}
        rows.append(row)
        if denv.rank == 0:
            print(json.dumps(row), flush=True)
    if denv.rank == 0:
        worst = max((abs(r["error"]) for r in rows), default=0.0)
        print(json.dumps({"rows": rows, "max_abs_error": worst, "device": name}), flush=True)
    import torch.distributed as dist

    dist.destroy_process_group()


def launch(args, argv) -> int:
    """Start `args.ranks` copies of this script with the torch.distributed variables set."""
    from pretrain.train.distenv import free_port

    port, procs = free_port(), []
    for rank in range(args.ranks):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(args.ranks), "LOCAL_WORLD_SIZE": str(args.ranks),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        procs.append(subprocess.Popen([sys.executable, __file__, *argv], env=env,
                                      stdout=None if rank == 0 else subprocess.DEVNULL))
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if "RANK" not in os.environ:
        return launch(args, argv)
    rank_main(args)
    from benchmarks.common import end_rank

    end_rank(0)


if __name__ == "__main__":
    sys.exit(main())
