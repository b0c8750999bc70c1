"""Model benchmark (issue 3): forward + backward + AdamW step of the plain-PyTorch models, random
tokens, tokens/s and MFU (6N + 12·L·d·T, pretrain.model.flops) on whatever device is here.

    python benchmarks/model_throughput.py                      # CPU: gpt-demo, fp32, tiny
    python benchmarks/model_throughput.py --runs gpt2-124m:32 gpt2-350m:16 --seq-len 1024 \\
        --dtype bf16 --compile                                  # GPU: the issue's comparison

Each run is `CONFIG:BATCH` (configs/model/CONFIG.yaml; when the config leaves the vocabulary to
the data: --vocab-size, default 50304 on a GPU, 8192 as in `make demo` on a CPU). Ratios measured in the same process: activation checkpointing `full` and document
masking (8 documents per row) against the plain first run. MFU is null without a known GPU.
Prints the figures with the device named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain.configlib import load_yaml, validate_section  # noqa: E402
from pretrain.model import ModelConfig, build_model, flops_per_token, mfu, peak_flops  # noqa: E402


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} (CPU, {torch.get_num_threads()} threads)"
    return "unknown CPU"


def load_cfg(name: str, seq_len: int, vocab_size: int, **update) -> ModelConfig:
    data = load_yaml(REPO / "configs" / "model" / f"{name}.yaml")
    data["vocab_size"] = data.get("vocab_size") or vocab_size
    data["max_seq_len"] = max(seq_len, data["max_seq_len"])
    data.update(update)
    return validate_section(ModelConfig, data, source=name)


def time_steps(cfg: ModelConfig, batch: int, seq_len: int, args, device) -> float:
    """Median ms per training step (fwd + bwd + AdamW) after warm-up."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = torch.compile(model) if args.compile else model
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device=device)
    doc_ids = (torch.arange(seq_len, device=device) * 8 // seq_len).int().expand(batch, -1)
    kw = {"doc_ids": doc_ids} if cfg.doc_masking else {}
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    times_ms = []
    for i in tqdm(range(args.warmup + args.steps), desc=f"{cfg.d_model}d x {batch}", leave=False):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=args.dtype != "fp32"):
            loss = step(ids[:, :-1], targets=ids[:, 1:], **kw)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return sorted(times_ms)[len(times_ms) // 2]


def measure(name: str, batch: int, args, device, **update) -> dict:
    cfg = load_cfg(name, args.seq_len, args.vocab_size, **update)
    step_time_ms = time_steps(cfg, batch, args.seq_len, args, device)
    tokens_per_sec = batch * args.seq_len / (step_time_ms / 1e3)
    fpt = flops_per_token(cfg, args.seq_len)
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    util = mfu(tokens_per_sec, fpt, 1, peak=peak) if peak else None
    return {"config": name, "batch": batch, "seq_len": args.seq_len, **update,
            "step_time_ms": round(step_time_ms, 2), "tokens_per_sec": round(tokens_per_sec),
            "flops_per_token": fpt, "mfu": None if util is None else round(util, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["gpt-demo:4"], help="CONFIG:BATCH ...")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=None,
                   help="for configs without one (default: 50304 on a GPU, 8192 on a CPU)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-ratios", action="store_true", help="skip the checkpointing/doc-mask runs")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.vocab_size = args.vocab_size or (50304 if device.type == "cuda" else 8192)
    runs = [(n, int(b)) for n, b in (r.rsplit(":", 1) for r in args.runs)]
    results = [measure(n, b, args, device) for n, b in runs]
    ratios = {}
    if not args.no_ratios:
        name, batch = runs[0]
        full = measure(name, batch, args, device, activation_checkpointing="full")
        docs = measure(name, batch, args, device, doc_masking=True)
        results += [full, docs]
        base = results[0]["tokens_per_sec"]
        ratios = {"checkpoint_full_vs_none": round(full["tokens_per_sec"] / base, 3),
                  "doc_masking_vs_causal": round(docs["tokens_per_sec"] / base, 3)}
    hardware = device_name(device)
    print(f"device: {hardware}; dtype {args.dtype}; compile {args.compile}; torch {torch.__version__}")
    for r in results:
        extra = {k: r[k] for k in ("activation_checkpointing", "doc_masking") if k in r}
        print(f"{r['config']} batch {r['batch']} x {r['seq_len']} {extra or ''}: "
              f"{r['step_time_ms']} ms/step, {r['tokens_per_sec']} tokens/s, MFU {r['mfu']}")
    for k, v in ratios.items():
        print(f"ratio {k}: {v}")
    if device.type == "cpu":
        print("no GPU here: MFU and the GPU comparison (gpt2-124m/350m, bf16, compile) not measured")
    print(json.dumps({"device": hardware, "dtype": args.dtype, "compile": args.compile,
                      "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
