"""Activation memory (issue 9): what one training forward + backward of a plain-PyTorch model
keeps for backward, and its peak, under each activation-checkpointing policy of
pretrain/train/parallelize.py (none / full / every-2 / selective / selective with every second
matmul recomputed); and the peak of the loss alone (output projection + cross-entropy on the
model's B·T x d_model final states), plain vs chunked (pretrain/model/loss.py).

    python benchmarks/activation_memory.py                           # gpt2-124m, 2 x 512, fp32
    python benchmarks/activation_memory.py --batch 4 --seq-len 1024 --rss   # the issue's shape

Tensor bytes come from pretrain.memory.TensorMemory (the storages every op allocates, counted
while they live): `held` = bytes alive after the forward (what backward needs), `peak` = the
highest total during forward + backward (gradients included). Exact, and the same on any device.
`--rss` also runs each policy in a fresh subprocess and reports its peak resident set size
(ru_maxrss: includes the interpreter, weights and the allocator's slack, as the issue measured).
Losses must be identical under every policy (checked). Ratios are against `none`, measured in
this one run; the device is named. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_name  # noqa: E402
from pretrain.configlib import load_yaml, validate_section  # noqa: E402
from pretrain.memory import TensorMemory  # noqa: E402
from pretrain.model import ModelConfig, build_model  # noqa: E402
from pretrain.train.config import ActivationCheckpointing  # noqa: E402
from pretrain.train.parallelize import (  # noqa: E402
    apply_activation_checkpointing,
)

POLICIES = {"none": "none", "full": "full", "every-2": {"every_n": 2}, "selective": "selective",
            "selective-every-second-mm": {"mode": "selective", "selective_mm": "every_second"}}




def load_cfg(args) -> ModelConfig:
    data = load_yaml(REPO / "configs" / "model" / f"{args.config}.yaml")
    data["vocab_size"] = data.get("vocab_size") or args.vocab_size
    data["max_seq_len"] = max(args.seq_len, data["max_seq_len"])
    data["dropout"] = 0.0
    return validate_section(ModelConfig, data, source=args.config)


def setup(args, policy: str, device: torch.device):
    torch.manual_seed(0)
    model = build_model(load_cfg(args)).to(device).train()
    apply_activation_checkpointing(model, ActivationCheckpointing.model_validate(POLICIES[policy]))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (args.batch, args.seq_len + 1), generator=g)
    ids = ids.to(device)
    return model, {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}


def measure(args, policy: str, device: torch.device) -> dict:
    """Tensor bytes (held after forward, peak) under TensorMemory, then one timed step."""
    model, batch = setup(args, policy, device)
    with TensorMemory() as mem:
        loss = model(**batch)["loss"]
        held = mem.live_bytes
        loss.backward()
    out = {"policy": policy, "loss": loss.item(), "held_bytes": held, "peak_bytes": mem.peak_bytes}
    del loss
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(**batch)["loss"].backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["step_time_s"] = round(time.perf_counter() - t0, 3)
    return out


def measure_loss(args, device: torch.device) -> list[dict]:
    """Loss forward + backward alone: hidden (B·T, C) @ W (V, C)^T -> mean cross-entropy."""
    from pretrain.model.loss import chunked_linear_cross_entropy, cross_entropy

    cfg = load_cfg(args)
    g = torch.Generator().manual_seed(2)
    n = args.batch * args.seq_len
    hidden = torch.randn(n, cfg.d_model, generator=g).to(device).requires_grad_()
    weight = (torch.randn(cfg.vocab_size, cfg.d_model, generator=g) * 0.02).to(device)
    weight.requires_grad_()
    targets = torch.randint(0, cfg.vocab_size, (n,), generator=g).to(device)
    kinds = {"plain": lambda: cross_entropy((hidden @ weight.t())[None], targets[None]),
             "chunked": lambda: chunked_linear_cross_entropy(hidden, weight, targets,
                                                             chunk_rows=args.loss_chunk_rows)}
    rows = []
    for kind, fn in kinds.items():
        with TensorMemory() as mem:
            loss = fn()
            loss.backward()
        hidden.grad = weight.grad = None
        t0 = time.perf_counter()
        fn().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append({"loss_kind": kind, "loss": loss.item(), "peak_bytes": mem.peak_bytes,
                     "step_time_s": round(time.perf_counter() - t0, 3)})
        hidden.grad = weight.grad = None
    return rows


def child(args) -> None:
    """One policy, one forward + backward, in this fresh process: print its peak RSS. VmHWM,
    not getrusage's ru_maxrss: Linux carries the parent's peak into ru_maxrss across exec."""
    model, batch = setup(args, args.child, torch.device("cpu"))
    model(**batch)["loss"].backward()
    status = Path("/proc/self/status").read_text().splitlines()
    kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_bytes": kib * 1024}))


def peak_rss(args, policy: str) -> int:
    cmd = [sys.executable, __file__, "--child", policy, "--config", args.config,
           "--batch", str(args.batch), "--seq-len", str(args.seq_len),
           "--vocab-size", str(args.vocab_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="gpt2-124m", help="configs/model/NAME.yaml (decoder)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=50304,
                   help="for configs that leave it to the data")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--rss", action="store_true", help="also peak RSS per policy (CPU, subprocesses)")
    p.add_argument("--loss-chunk-rows", type=int, default=4096, help="chunked loss: rows per chunk")
    p.add_argument("--no-loss", action="store_true", help="skip the loss-alone comparison")
    p.add_argument("--child", choices=list(POLICIES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for policy in args.policies:
        row = measure(args, policy, device)
        if args.rss and device.type == "cpu":
            row["peak_rss_bytes"] = peak_rss(args, policy)
        rows.append(row)
        print(f"  {policy}: held {row['held_bytes'] / 2**20:.1f} MiB, peak "
              f"{row['peak_bytes'] / 2**20:.1f} MiB, {row['step_time_s']} s", file=sys.stderr)
    losses = {r["loss"] for r in rows}
    base = rows[0]
    ratios = {f"{r['policy']}_vs_{base['policy']}": {
        k: round(r[k] / base[k], 3) for k in ("held_bytes", "peak_bytes", "peak_rss_bytes",
                                              "step_time_s") if k in r} for r in rows[1:]}
    hardware = device_name(device)
    print(f"device: {hardware}; torch {torch.__version__}; {args.config} batch {args.batch} x "
          f"{args.seq_len}, fp32, vocab {load_cfg(args).vocab_size}")
    for r in rows:
        rss = f", peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in r else ""
        print(f"{r['policy']:>26}: held for backward {r['held_bytes'] / 2**20:8.1f} MiB, peak "
              f"{r['peak_bytes'] / 2**20:8.1f} MiB{rss}, fwd+bwd {r['step_time_s']} s")
    for k, v in ratios.items():
        print(f"ratio {k}: {v}")
    print(f"identical losses under every policy: {len(losses) == 1}")
    loss_rows = [] if args.no_loss else measure_loss(args, device)
    for r in loss_rows:
        print(f"loss alone, {r['loss_kind']:>7}: peak {r['peak_bytes'] / 2**20:8.1f} MiB, "
              f"fwd+bwd {r['step_time_s']} s (loss {r['loss']:.6f})")
    if loss_rows:
        plain, chunked = loss_rows
        ratios["loss_chunked_vs_plain"] = {
            k: round(chunked[k] / plain[k], 3) for k in ("peak_bytes", "step_time_s")}
        print(f"ratio loss_chunked_vs_plain ({args.loss_chunk_rows} rows per chunk): "
              f"{ratios['loss_chunked_vs_plain']}")
    print(json.dumps({"device": hardware, "config": args.config, "batch": args.batch,
                      "seq_len": args.seq_len, "dtype": "fp32", "results": rows,
                      "loss_results": loss_rows, "ratios": ratios,
                      "identical_losses": len(losses) == 1}))


if __name__ == "__main__":
    main()
