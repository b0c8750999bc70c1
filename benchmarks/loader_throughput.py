"""Loader benchmark (issue 4): packed + shuffled decoder samples through `train_batches` in one
process (goal >= 50M tokens/s), and start-up time (open_data + first batch) for synthetic corpora
of 10^5 vs 10^7 samples (goal: ratio <= 1.5). Corpora are written to a temp folder in the
layout `data_tools shard` writes (one record batch per shard file, 256 MB shards) and, for
comparison, in record batches of 512 documents (what a generic Arrow writer might produce).

    python benchmarks/loader_throughput.py [--seconds 5] [--large 10000000]
    python benchmarks/loader_throughput.py --check-cost-only [--check-tokens 134217728]

Also measures what the per-window checks of every gathered batch cost (offsets within bounds,
document starts in order, ids < vocab: pretrain/data/stream.py): throughput as shipped against
the same loader with those three checks patched to no-ops (here only), in alternating rounds so
a change of load hits both alike. `--check-cost-only` runs just that, on a smaller corpus.

Prints the figures with the CPU named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model  # noqa: E402
from pretrain.data import DataConfig, train_batches  # noqa: E402
from pretrain.data.synthetic import random_docs, write_folder  # noqa: E402
from pretrain.objectives import open_data  # noqa: E402

VOCAB = 32_000
MEAN_DOC_TOKENS = 400
SHARD_TOKENS = 128 * 2**20          # 256 MB of uint16 per shard, as `data_tools shard`'s default




def write_corpus(folder: Path, num_samples: int, seq_len: int, seed: int,
                 batch_docs: int | None) -> None:
    """About num_samples windows of seq_len + 1, in shards of SHARD_TOKENS tokens."""
    rng = np.random.default_rng(seed)
    total = num_samples * seq_len * MEAN_DOC_TOKENS // (MEAN_DOC_TOKENS + 1) + seq_len
    sizes = [SHARD_TOKENS] * (total // SHARD_TOKENS) + ([total % SHARD_TOKENS] if
                                                        total % SHARD_TOKENS else [])
    shards = (random_docs(rng, n, MEAN_DOC_TOKENS, 2, VOCAB, np.uint16)
              for n in tqdm(sizes, desc=f"writing {folder.name}", unit="shard"))
    val = [random_docs(rng, 100 * seq_len, MEAN_DOC_TOKENS, 2, VOCAB, np.uint16)]
    write_folder(folder, {"train": shards, "val": val}, VOCAB, batch_docs=batch_docs)


def startup_s(folder: Path, seq_len: int) -> float:
    """open_data (manifest + shard checks, memory maps) + the first micro-batch."""
    t0 = time.perf_counter()
    src = open_data(DataConfig(path=str(folder), seq_len=seq_len), seed=0)
    next(train_batches(src, 8, 8, 0, 1, 0, num_workers=0))
    return time.perf_counter() - t0


def throughput(folder: Path, seq_len: int, micro: int, seconds: float) -> dict:
    src = open_data(DataConfig(path=str(folder), seq_len=seq_len), seed=0)
    batches = train_batches(src, micro, micro, 0, 1, 0, num_workers=0)
    for _ in itertools.islice(batches, 5):
        pass                                    # warm-up
    n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for b in itertools.islice(batches, 10):
            n += b["input_ids"].numel()
    batched = n / (time.perf_counter() - t0)
    per_cpu_s = n / (time.process_time() - cpu0)
    # the same samples one at a time (DataSource.sample in a Python loop), for the ratio
    idx, epoch = src.order(np.arange(2000))
    t0 = time.perf_counter()
    per_sample = [src.sample("train", int(i), int(e)) for i, e in zip(idx, epoch)]
    single = len(per_sample) * seq_len / (time.perf_counter() - t0)
    return {"tokens_per_sec": batched, "tokens_per_cpu_sec": per_cpu_s, "samples_per_sec": batched / seq_len,
            "per_sample_tokens_per_sec": single, "num_samples": src.num_samples("train")}


CHECKS = ("_check_offsets", "_check_tiling", "_check_ids")


def _rate(src, micro: int, seconds: float) -> tuple[float, float]:
    """(tokens per wall second, per CPU second of this process) of packed + shuffled
    micro-batches, for `seconds`."""
    batches = train_batches(src, micro, micro, 0, 1, 0, num_workers=0)
    for _ in itertools.islice(batches, 3):
        pass
    n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for b in itertools.islice(batches, 10):
            n += b["input_ids"].numel()
    return n / (time.perf_counter() - t0), n / (time.process_time() - cpu0)


def check_cost(folder: Path, seq_len: int, micro: int, seconds: float, rounds: int) -> dict:
    """Median tokens/s with and without the per-window checks, rounds alternating."""
    from pretrain.data.stream import SplitStream

    src = open_data(DataConfig(path=str(folder), seq_len=seq_len), seed=0)
    shipped = {name: getattr(SplitStream, name) for name in CHECKS}
    rates: dict[str, list[tuple[float, float]]] = {"checked": [], "unchecked": []}
    try:
        for _ in range(rounds):
            for mode in rates:
                for name, fn in shipped.items():
                    setattr(SplitStream, name, fn if mode == "checked" else
                            (lambda *a, **k: None))
                rates[mode].append(_rate(src, micro, seconds))
    finally:
        for name, fn in shipped.items():
            setattr(SplitStream, name, fn)
    med = {m: [statistics.median(r[i] for r in rates[m]) for i in (0, 1)] for m in rates}
    (checked, checked_cpu), (unchecked, unchecked_cpu) = med["checked"], med["unchecked"]
    return {"checked_tokens_per_sec": round(checked), "unchecked_tokens_per_sec": round(unchecked),
            "checked_tokens_per_cpu_sec": round(checked_cpu),
            "unchecked_tokens_per_cpu_sec": round(unchecked_cpu),
            "checked_vs_unchecked": round(checked / unchecked, 3),
            "checked_vs_unchecked_per_cpu_sec": round(checked_cpu / unchecked_cpu, 3),
            "rounds": rounds, "seconds_per_round": seconds,
            "corpus_tokens": src.num_samples("train") * seq_len}


def print_check_cost(c: dict, seq_len: int, micro: int) -> None:
    print(f"per-window checks, T={seq_len}, batch {micro}, 1 process, median of {c['rounds']} "
          f"alternating rounds: {c['checked_tokens_per_sec'] / 1e6:.1f}M tokens/s checked vs "
          f"{c['unchecked_tokens_per_sec'] / 1e6:.1f}M unchecked, ratio "
          f"{c['checked_vs_unchecked']} wall, {c['checked_vs_unchecked_per_cpu_sec']} per CPU "
          f"second (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")


def check_cost_only(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "corpus"
        write_corpus(folder, args.check_tokens // args.seq_len, args.seq_len, 3, None)
        c = check_cost(folder, args.seq_len, args.micro_batch, args.seconds, args.rounds)
    print(f"CPU: {cpu_model()} (no GPU here; the loader runs on the CPU in any case)")
    print_check_cost(c, args.seq_len, args.micro_batch)
    print(json.dumps({"cpu": cpu_model(), "gpu": None, "seq_len": args.seq_len,
                      "micro_batch": args.micro_batch, "load_avg_1min": os.getloadavg()[0],
                      **c}))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=1024, help="T of the throughput run")
    p.add_argument("--micro-batch", type=int, default=32, help="samples per batch")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput run")
    p.add_argument("--small", type=int, default=10**5, help="samples in the small corpus")
    p.add_argument("--large", type=int, default=10**7, help="samples in the large corpus")
    p.add_argument("--startup-seq-len", type=int, default=64,
                   help="T of the start-up corpora (10^7 samples x 64 tokens = 1.3 GB)")
    p.add_argument("--repeats", type=int, default=7, help="start-up measurements per corpus")
    p.add_argument("--workdir", default=None, help="where to write the corpora (default: temp)")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating checked/unchecked rounds of --seconds each")
    p.add_argument("--check-cost-only", action="store_true",
                   help="only the cost of the per-window checks, on a --check-tokens corpus")
    p.add_argument("--check-tokens", type=int, default=2**27,
                   help="corpus size for --check-cost-only (2^27 tokens = 256 MB)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.check_cost_only:
        check_cost_only(args)
        return

    layouts = {"data_tools": None, "batches_of_512_docs": 512}
    startup: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for layout, batch_docs in layouts.items():
            small, large = Path(tmp) / f"{layout}_small", Path(tmp) / f"{layout}_large"
            write_corpus(small, args.small, args.startup_seq_len, 1, batch_docs)
            write_corpus(large, args.large, args.startup_seq_len, 2, batch_docs)
            startup_s(small, args.startup_seq_len)  # warm imports and page cache
            startup_s(large, args.startup_seq_len)
            times: dict[str, list[float]] = {"small": [], "large": []}
            for _ in range(args.repeats):       # interleaved, so load changes hit both
                times["small"].append(startup_s(small, args.startup_seq_len))
                times["large"].append(startup_s(large, args.startup_seq_len))
            startup[layout] = (statistics.median(times["small"]),
                               statistics.median(times["large"]))
            if layout == "data_tools":
                tp = throughput(large, args.seq_len, args.micro_batch, args.seconds)
                checks = check_cost(large, args.seq_len, args.micro_batch, args.seconds,
                                    args.rounds)
            for path in (small, large):
                shutil.rmtree(path)
    t_small, t_large = startup["data_tools"]
    o_small, o_large = startup["batches_of_512_docs"]

    result = {
        "cpu": cpu_model(), "gpu": None, "processes": 1, "seq_len": args.seq_len,
        "micro_batch": args.micro_batch, "corpus_tokens_per_sample_in_startup": args.startup_seq_len,
        "tokens_per_sec": round(tp["tokens_per_sec"]),
        "tokens_per_cpu_sec": round(tp["tokens_per_cpu_sec"]),
        "load_avg_1min": os.getloadavg()[0], "cpu_cores": os.cpu_count(),
        "samples_per_sec": round(tp["samples_per_sec"]),
        "per_sample_loop_tokens_per_sec": round(tp["per_sample_tokens_per_sec"]),
        "batched_vs_per_sample": round(tp["tokens_per_sec"] / tp["per_sample_tokens_per_sec"], 2),
        "startup_small_s": round(t_small, 5), "startup_large_s": round(t_large, 5),
        "startup_ratio": round(t_large / t_small, 3),
        "startup_batches_of_512_docs_s": [round(o_small, 5), round(o_large, 5)],
        "startup_ratio_batches_of_512_docs": round(o_large / o_small, 3),
        "startup_samples": [args.small, args.large],
        "checks": checks,
    }
    print(f"CPU: {result['cpu']} (no GPU here; the loader runs on the CPU in any case)")
    print(f"throughput, 1 process, packed + shuffled, T={args.seq_len}, batch {args.micro_batch}: "
          f"{tp['tokens_per_sec'] / 1e6:.1f}M tokens/s = {tp['samples_per_sec']:.0f} samples/s "
          f"(goal >= 50M tokens/s); per CPU-second of this process "
          f"{tp['tokens_per_cpu_sec'] / 1e6:.1f}M (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores); one sample at a time: "
          f"{tp['per_sample_tokens_per_sec'] / 1e6:.1f}M tokens/s "
          f"(batched is {result['batched_vs_per_sample']}x)")
    print_check_cost(checks, args.seq_len, args.micro_batch)
    for layout, (a, b) in startup.items():
        print(f"start-up (open + first batch), {layout} layout, median of {args.repeats}: "
              f"{args.small:.0e} samples {a * 1e3:.1f} ms, {args.large:.0e} samples "
              f"{b * 1e3:.1f} ms, ratio {b / a:.2f} (goal <= 1.5)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
