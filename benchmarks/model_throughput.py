"""Model benchmark (issues 3, 9): forward + backward + AdamW step of the plain-PyTorch models,
random tokens, tokens/s, MFU (pretrain.model.flops) and peak memory on whatever device is here.

    python benchmarks/model_throughput.py                      # CPU: gpt-demo, fp32, tiny
    python benchmarks/model_throughput.py --runs gpt2-124m:32 gpt2-350m:16 transformer-base:64 \\
        --seq-len 1024 --dtype bf16 --compile                  # GPU: the issue's comparison
    python benchmarks/model_throughput.py --runs llama-1.1b:8 --seq-len 2048 --dtype bf16 \\
        --compile --ac-modes none full every-n selective       # GPU: checkpointing policies

Each run is `CONFIG:BATCH` (configs/model/CONFIG.yaml; when the config leaves the vocabulary to
the data: --vocab-size, default 50304 on a GPU, 8192 as in `make demo` on a CPU). Decoders take
(B, seq-len) windows; encoder-decoders (B, seq-len) sources with attention masks and (B,
target-len) decoder inputs/targets, target-len defaulting to what T5 span corruption of seq-len
gives (tokens/s and MFU count source tokens, as pretrain.model.flops does).

Unless --no-ratios, the first run is repeated, in the same process, under each activation
checkpointing policy of --ac-modes (pretrain/train/parallelize.py) and with document masking
(--docs-per-row documents per row) through the dense boolean mask and through flex_attention
(GPU only: torch has no flex backward on CPU); ratios are against the plain first run.
Peak memory: torch.cuda.max_memory_allocated on a GPU, the process's peak RSS (VmHWM, reset
before each run) on a CPU. MFU is null without a known GPU. Prints the figures with the device
named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_name  # noqa: E402
from pretrain.configlib import load_yaml, validate_section  # noqa: E402
from pretrain.data.span import span_lengths  # noqa: E402
from pretrain.model import ModelConfig, build_model, flops_per_token, mfu, peak_flops  # noqa: E402
from pretrain.train.config import ActivationCheckpointing  # noqa: E402
from pretrain.train.parallelize import (  # noqa: E402
    apply_activation_checkpointing,
    apply_compile,
)

AC_MODES = ("none", "full", "every-n", "selective", "selective-every-second-mm")




def load_cfg(name: str, args, **update) -> ModelConfig:
    data = load_yaml(REPO / "configs" / "model" / f"{name}.yaml")
    data["vocab_size"] = data.get("vocab_size") or args.vocab_size
    data["max_seq_len"] = max(args.seq_len, args.target_len or 0, data["max_seq_len"])
    data["loss"] = args.loss
    data.update(update)
    return validate_section(ModelConfig, data, source=name)


def target_len(cfg: ModelConfig, args) -> int | None:
    """Decoder: None. Encoder-decoder: --target-len, else T5 span corruption's for seq-len."""
    if cfg.family == "decoder":
        return None
    return args.target_len or span_lengths(args.seq_len, 0.15, 3.0).targets_length


def make_batch(cfg: ModelConfig, batch: int, args, device) -> dict[str, torch.Tensor]:
    S, V = args.seq_len, cfg.vocab_size
    if cfg.family == "decoder":
        ids = torch.randint(0, V, (batch, S + 1), device=device)
        out = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
        if cfg.doc_masking:  # --docs-per-row documents of equal length per row
            docs = (torch.arange(S, device=device) * args.docs_per_row // S).int()
            out["doc_ids"] = docs.expand(batch, -1)
        return out
    T = target_len(cfg, args)
    targets = torch.randint(0, V, (batch, T), device=device)
    return {"input_ids": torch.randint(0, V, (batch, S), device=device),
            "attention_mask": torch.ones(batch, S, dtype=torch.bool, device=device),
            "decoder_input_ids": torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], 1),
            "targets": targets}


def ac_policy(mode: str, every_n: int) -> ActivationCheckpointing:
    spec = {"every-n": {"every_n": every_n},
            "selective-every-second-mm": {"mode": "selective", "selective_mm": "every_second"}}
    return ActivationCheckpointing.model_validate(spec.get(mode, mode))


class PeakMemory:
    """Peak memory of the code inside: CUDA allocator peak, or the process's peak RSS on Linux
    (the high-water mark is reset through /proc/self/clear_refs). None when unavailable."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss"

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:  # give freed heap back to the OS, then reset VmHWM to the current RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.kind:
            status = Path("/proc/self/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmHWM:"))
            self.bytes = kib * 1024


def time_steps(cfg: ModelConfig, batch: int, args, device, ac: str) -> tuple[float, PeakMemory]:
    """Median ms per training step (fwd + bwd + AdamW) after warm-up, and the peak memory."""
    with PeakMemory(device) as peak:
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        apply_activation_checkpointing(model, ac_policy(ac, args.every_n))
        if args.compile:
            apply_compile(model, args.compile_scope)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        data = make_batch(cfg, batch, args, device)
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        times_ms = []
        for i in tqdm(range(args.warmup + args.steps), desc=f"{cfg.d_model}d x {batch}",
                      leave=False):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=args.dtype != "fp32"):
                loss = model(**data)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times_ms.append((time.perf_counter() - t0) * 1e3)
        del model, opt, data, loss
    return sorted(times_ms)[len(times_ms) // 2], peak


def measure(name: str, batch: int, args, device, ac: str = "none", **update) -> dict:
    cfg = load_cfg(name, args, **update)
    step_time_ms, peak = time_steps(cfg, batch, args, device, ac)
    tokens_per_sec = batch * args.seq_len / (step_time_ms / 1e3)
    T = target_len(cfg, args)
    fpt = flops_per_token(cfg, args.seq_len, T)
    gpu_peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    util = mfu(tokens_per_sec, fpt, 1, peak=gpu_peak) if gpu_peak else None
    extra = {"target_len": T} if T else {}
    if ac != "none":
        extra["activation_checkpointing"] = ac
    if cfg.doc_masking:
        extra["doc_mask_kernel"] = cfg.doc_kernel(device.type)
    return {"config": name, "batch": batch, "seq_len": args.seq_len, **extra,
            "step_time_ms": round(step_time_ms, 2), "tokens_per_sec": round(tokens_per_sec),
            "flops_per_token": fpt, "mfu": None if util is None else round(util, 4),
            "peak_memory_bytes": peak.bytes, "memory_kind": peak.kind}


def ratio_runs(name: str, batch: int, args, device, base: dict) -> tuple[list, dict, list]:
    """The first run again under each checkpointing policy and with document masking."""
    results, ratios, notes = [], {}, []

    def rel(row: dict, key: str):
        a, b = row.get(key), base.get(key)
        return round(a / b, 3) if a and b else None

    for ac in args.ac_modes:
        if ac == "none":
            continue
        row = measure(name, batch, args, device, ac=ac)
        key = ac.replace("-", "_")
        ratios[f"checkpoint_{key}_vs_none"] = rel(row, "tokens_per_sec")
        ratios[f"checkpoint_{key}_memory_vs_none"] = rel(row, "peak_memory_bytes")
        results.append(row)
    if load_cfg(name, args).family != "decoder":
        notes.append(f"document masking: {name} is an encoder-decoder (decoders only)")
        return results, ratios, notes
    for kernel in ("dense", "flex"):
        if kernel == "flex" and device.type != "cuda":
            notes.append("flex document masking: GPU only (torch has no flex backward on CPU)")
            continue
        row = measure(name, batch, args, device, doc_masking=True, doc_mask_kernel=kernel,
                      dropout=0.0)
        ratios[f"doc_masking_{kernel}_vs_causal"] = rel(row, "tokens_per_sec")
        results.append(row)
    auto = "flex" if device.type == "cuda" else "dense"  # model.doc_mask_kernel: auto
    ratios["doc_masking_vs_causal"] = ratios.get(f"doc_masking_{auto}_vs_causal")
    return results, ratios, notes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["gpt-demo:4"], help="CONFIG:BATCH ...")
    p.add_argument("--seq-len", type=int, default=256, help="decoder window / encoder source")
    p.add_argument("--target-len", type=int, default=None,
                   help="encoder-decoder target length (default: span corruption of seq-len)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="for configs without one (default: 50304 on a GPU, 8192 on a CPU)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-scope", choices=["model", "blocks"], default="model",
                   help="with --compile: the whole forward, or each block (torchtitan)")
    p.add_argument("--loss", choices=["plain", "chunked"], default="plain",
                   help="model.loss for every run")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-ratios", action="store_true",
                   help="skip the checkpointing/doc-mask runs")
    p.add_argument("--ac-modes", nargs="+", choices=AC_MODES,
                   default=["none", "full", "every-n", "selective"],
                   help="checkpointing policies measured on the first run")
    p.add_argument("--every-n", type=int, default=2, help="the every-n policy's n")
    p.add_argument("--docs-per-row", type=int, default=8, help="document-masking runs")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.vocab_size = args.vocab_size or (50304 if device.type == "cuda" else 8192)
    runs = [(n, int(b)) for n, b in (r.rsplit(":", 1) for r in args.runs)]
    results = [measure(n, b, args, device) for n, b in runs]
    ratios, notes = {}, []
    if not args.no_ratios:
        more, ratios, notes = ratio_runs(*runs[0], args, device, results[0])
        results += more
    hardware = device_name(device)
    print(f"device: {hardware}; dtype {args.dtype}; compile {args.compile}"
          f"{f' ({args.compile_scope})' if args.compile else ''}; loss {args.loss}; "
          f"torch {torch.__version__}")
    for r in results:
        extra = {k: r[k] for k in ("target_len", "activation_checkpointing", "doc_mask_kernel")
                 if k in r}
        mem = (f"{r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['memory_kind']})"
               if r["peak_memory_bytes"] else "n/a")
        print(f"{r['config']} batch {r['batch']} x {r['seq_len']} {extra or ''}: "
              f"{r['step_time_ms']} ms/step, {r['tokens_per_sec']} tokens/s, MFU {r['mfu']}, "
              f"peak memory {mem}")
    for k, v in ratios.items():
        print(f"ratio {k}: {v}")
    for note in notes:
        print(f"not measured: {note}")
    if device.type == "cpu":
        print("no GPU here: MFU and the GPU comparison (gpt2-124m/350m, bf16, compile) not measured")
    print(json.dumps({"device": hardware, "dtype": args.dtype, "compile": args.compile,
                      "compile_scope": args.compile_scope if args.compile else None,
                      "loss": args.loss, "results": results, "ratios": ratios,
                      "not_measured": notes}))


if __name__ == "__main__":
    main()
