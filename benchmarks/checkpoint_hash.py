"""Checkpoint hashing cost (issue 10 #2): seconds per GB of sha256 and blake2b over a checkpoint
file just written by torch.save (in the page cache, as the trainer hashes it right after
writing), and the save-time overhead of hashing (torch.save alone vs torch.save + sha256).

    python benchmarks/checkpoint_hash.py [--mb 512] [--repeat 3] [--dir /tmp]

Prints the figures with the CPU named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_flags, cpu_model  # noqa: E402
from pretrain.exit_codes import EXIT_OK  # noqa: E402
from pretrain.train.checkpoint import file_hash  # noqa: E402


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def digest(path: Path, algo: str) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=512, help="checkpoint file size in MB (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    p.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    args = p.parse_args()
    state = {"w": torch.randn(args.mb * 10**6 // 4)}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "optim_states.pt"
        save_s = best_of(args.repeat, lambda: torch.save(state, path))
        gb = path.stat().st_size / 1e9
        rates = {algo: best_of(args.repeat, lambda a=algo: digest(path, a)) / gb
                 for algo in ("sha256", "blake2b")}
        both_s = best_of(args.repeat, lambda: (torch.save(state, path), file_hash(path)))
        os.sync()
    cpu = cpu_model() + (" (sha_ni)" if "sha_ni" in cpu_flags() else "")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; file {gb:.2f} GB, best of {args.repeat}")
    for algo, s_per_gb in rates.items():
        print(f"  {algo:8s} {s_per_gb:.2f} s/GB ({1 / s_per_gb:.2f} GB/s)")
    print(f"  blake2b / sha256 time: {rates['blake2b'] / rates['sha256']:.2f}x")
    print(f"  torch.save {save_s / gb:.2f} s/GB; save + sha256 {both_s / gb:.2f} s/GB "
          f"(hashing adds {both_s / save_s - 1:.0%})")
    print(json.dumps({"cpu": cpu, "gb": round(gb, 3),
                      "sha256_s_per_gb": round(rates["sha256"], 3),
                      "blake2b_s_per_gb": round(rates["blake2b"], 3),
                      "save_s_per_gb": round(save_s / gb, 3),
                      "save_plus_hash_s_per_gb": round(both_s / gb, 3)}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
