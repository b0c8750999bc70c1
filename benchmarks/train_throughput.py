"""Trainer benchmark (issue 5): tokens/s of our trainer (DeepSpeed engine, the real
`Trainer.train_step`, ZeRO-0 and ZeRO-2) against a plain PyTorch loop (model, torch AdamW,
forward/backward/step) on the same model, the same batches and the same process.

    python benchmarks/train_throughput.py [--model gpt-tiny] [--batch 8] [--seq-len 128]

One process (world size 1, gloo): this measures the engine's per-step overhead, not scaling.
Rounds alternate plain / ours so a busy machine slows both alike; medians are reported.
There is no GPU here: GPU figures (the gpt2-124m/350m rows of the issue) are not measured.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
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
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from pretrain.data import train_batches  # noqa: E402
from pretrain.data.synthetic import random_docs, write_folder  # noqa: E402
from pretrain.logs import setup_logging  # noqa: E402
from pretrain.train.config import build_run_config  # noqa: E402
from pretrain.train.engine import init_distributed, resolve_dist_env  # noqa: E402
from pretrain.train.loop import Trainer  # noqa: E402

VOCAB = 8192


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def make_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 400_000, 300, 2, VOCAB)
    write_folder(folder, {"train": [docs], "val": [random_docs(rng, 20_000, 300, 2, VOCAB)]},
                 vocab_size=VOCAB)


def run_config(args, data: Path, run_dir: Path, stage: int):
    from pretrain.configlib import load_yaml

    model = load_yaml(REPO / "configs" / "model" / f"{args.model}.yaml")
    model.update(max_seq_len=max(args.seq_len, model["max_seq_len"]), dropout=0.0)
    return build_run_config({
        "run_dir": str(run_dir), "model": model, "resume": "never",
        "data": {"path": str(data), "seq_len": args.seq_len, "num_workers": 0},
        "train": {"max_steps": 10**6, "global_batch_size": args.batch,
                  "micro_batch_size": args.batch},
        "deepspeed": {"zero_stage": stage},
        "logging": {"wandb": {"mode": "disabled"}, "progress_bar": False}})


class Plain:
    """The reference: what a hand-written PyTorch loop does per step."""

    def __init__(self, trainer: Trainer):
        torch.manual_seed(0)
        from pretrain.model import build_model

        cfg = trainer.cfg
        self.model = build_model(cfg.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                     betas=(cfg.optim.beta1, cfg.optim.beta2))
        self.batches = train_batches(trainer.src, cfg.train.global_batch_size,
                                     cfg.train.micro_batch_size, 0, 1, 0)
        self.clip = cfg.optim.grad_clip

    def step(self) -> None:
        loss = self.model(**next(self.batches))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def measure(args, tmp: Path, stage: int, device) -> tuple[float, float]:
    """(ours, plain) median seconds per step, rounds alternating."""
    trainer = Trainer(run_config(args, tmp / "data", tmp / f"run{stage}", stage),
                      resolve_dist_env(), device)
    batches = train_batches(trainer.src, args.batch, args.batch, 0, 1, 0)
    plain = Plain(trainer)

    def ours() -> None:
        trainer.train_step(batches)

    timed(plain.step, 2), timed(ours, 2)  # warm-up
    ours_s, plain_s = [], []
    for _ in range(args.rounds):
        plain_s.append(timed(plain.step, args.steps))
        ours_s.append(timed(ours, args.steps))
    trainer.close()
    return statistics.median(ours_s), statistics.median(plain_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt-tiny", help="configs/model/NAME.yaml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging()
    device = init_distributed(resolve_dist_env())
    tmp = Path(tempfile.mkdtemp(prefix="train_bench_"))
    make_data(tmp / "data")
    tokens_per_step = args.batch * args.seq_len
    results = {}
    for stage in (0, 2):
        results[stage] = measure(args, tmp, stage, device)
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}; no GPU here, so no GPU "
          f"figures (MFU, gpt2-124m/350m rows) were measured")
    print(f"model {args.model}, batch {args.batch} × {args.seq_len} tokens, world size 1, fp32")
    for stage, (ours, plain) in results.items():
        print(f"ZeRO-{stage}: ours {ours * 1000:.1f} ms/step ({tokens_per_step / ours:.0f} "
              f"tokens/s), plain PyTorch {plain * 1000:.1f} ms/step "
              f"({tokens_per_step / plain:.0f} tokens/s), ratio {plain / ours:.3f}")
    ours, plain = results[2]
    print(json.dumps({
        "benchmark": "train_throughput", "device": f"CPU: {cpu_name()}", "gpu": None,
        "model": args.model, "tokens_per_step": tokens_per_step, "zero_stage": 2,
        "tokens_per_sec": tokens_per_step / ours, "plain_tokens_per_sec": tokens_per_step / plain,
        "ratio_vs_plain_torch": plain / ours,
        "ratio_vs_plain_torch_zero0": results[0][1] / results[0][0]}))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
