"""The loader over s3:// against the same loader over the local folder (issue 20), in one run
against one server:

1. tokens/s of `train_batches` (shuffled packed windows, one process): local, s3 warm (every
   shard already in the node cache), s3 cold (empty cache: downloads with the read-ahead while
   it runs), and s3 cold with a bounded cache (the smallest limit allowed); ratios to local
   (target: warm >= 0.95);
2. time to the first batch from s3 with a cold cache (open_data + one micro-batch) against the
   time to read the manifest and download one shard by hand (target: <= that + 20%);
3. data wait as a share of step time for a tiny model trained on CPU (forward, backward, AdamW)
   with a warm cache (target: < 1%).

Server: the AWS environment if AWS_ENDPOINT_URL or AWS_ACCESS_KEY_ID is set (an existing
bucket: --bucket), else a Ceph RGW started here (tests/helpers/ceph.py) and stopped at the end.

    python benchmarks/remote_loader.py [--shards 16] [--shard-mb 4] [--seconds 4]

Prints the figures with the CPU named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from data_tools.copy import copy_folder  # noqa: E402
from data_tools.folder import read_manifest  # noqa: E402
from data_tools.remote import SERVER_COMPAT_ENV, S3Path, shared_remote  # noqa: E402
from pretrain.data import DataConfig, train_batches  # noqa: E402
from pretrain.data.config import AUTO_BLOCK_SHARDS  # noqa: E402
from pretrain.data.remote_plan import plan_folders  # noqa: E402
from pretrain.data.synthetic import random_docs, write_folder  # noqa: E402
from pretrain.objectives import open_data  # noqa: E402

VOCAB = 32_000


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=16, help="train shards in the corpus")
    p.add_argument("--shard-mb", type=float, default=4.0, help="MB per shard (uint16 tokens)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    p.add_argument("--train-steps", type=int, default=30, help="steps of the tiny model")
    p.add_argument("--block-shards", type=int, default=AUTO_BLOCK_SHARDS,
                   help="data.shuffle_block_shards of every loader, local and s3 alike "
                   "(default: what auto gives over s3://; 0: a global shuffle)")
    p.add_argument("--bucket", default="arrowtrain-bench", help="bucket to write the corpus to")
    return p.parse_args()


def start_server():
    """(a server to stop, or None when the AWS environment names one already)."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    from helpers.ceph import start_rgw

    rgw = start_rgw()
    os.environ.update({**rgw.env(), **SERVER_COMPAT_ENV})
    return rgw


def write_corpus(folder: Path, shards: int, shard_mb: float) -> None:
    rng = np.random.default_rng(0)
    tokens = int(shard_mb * 2**20 / 2)
    write_folder(folder, {"train": [random_docs(rng, tokens, 400, 2, VOCAB, np.uint16)
                                    for _ in range(shards)],
                          "val": [random_docs(rng, 50_000, 400, 2, VOCAB, np.uint16)]}, VOCAB)


def tokens_per_sec(cfg: DataConfig, seconds: float, micro: int) -> tuple[float, object]:
    """Loader throughput over `seconds` (after one warm-up batch), and the DataSource."""
    src = open_data(cfg, seed=0)
    batches = train_batches(src, micro, micro, 0, 1, num_workers=0)
    next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(batches)["input_ids"].numel()
    rate = n / (time.perf_counter() - t0)
    if hasattr(batches, "close"):
        batches.close()
    return rate, src


def alternating_rates(cfgs: dict[str, DataConfig], seconds: float, micro: int,
                      rounds: int = 6) -> dict[str, float]:
    """Median tokens/s of each config's loader, measured in alternating rounds (a change of
    machine load hits all alike); the ratios are taken per round."""
    its = {}
    for name, cfg in cfgs.items():
        its[name] = train_batches(open_data(cfg, seed=0), micro, micro, 0, 1, num_workers=0)
        next(its[name])
    rates: dict[str, list[float]] = {name: [] for name in cfgs}
    for _ in range(rounds):
        for name, it in its.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                n += next(it)["input_ids"].numel()
            rates[name].append(n / (time.perf_counter() - t0))
    for it in its.values():
        if hasattr(it, "close"):
            it.close()
    first = next(iter(cfgs))
    out = {name: statistics.median(r) for name, r in rates.items()}
    out.update({f"{name}_over_{first}": statistics.median(a / b for a, b in
                                                          zip(rates[name], rates[first]))
                for name in cfgs if name != first})
    return out


def first_batch_s(cfg: DataConfig, micro: int) -> tuple[float, list]:
    """(seconds to the first micro-batch from a cold cache, the shards that batch reads)."""
    from pretrain.data.prefetch import shards_of_samples

    t0 = time.perf_counter()
    src = open_data(cfg, seed=0)
    batches = train_batches(src, micro, micro, 0, 1, num_workers=0)
    next(batches)
    seconds = time.perf_counter() - t0
    batches.close()
    indices, _ = src.order(np.arange(micro))
    return seconds, shards_of_samples(src, "train", indices)


def manifest_plus_shards_s(url: str, refs: list, tmp: Path) -> float:
    """Reading the manifest, then downloading `refs` by hand, 4 at a time (the floor of a
    first batch that reads them)."""
    from concurrent.futures import ThreadPoolExecutor

    remote = shared_remote()
    t0 = time.perf_counter()
    read_manifest(url)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda ir: remote.download(ir[1].url, tmp / f"s{ir[0]}", ir[1].size,
                                                 ir[1].sha256), enumerate(refs)))
    return time.perf_counter() - t0


def manifest_plus_one_shard_s(url: str, tmp: Path) -> float:
    """Reading the manifest and downloading the largest shard, by hand (the floor)."""
    remote = shared_remote()
    prefix = S3Path.parse(url)
    t0 = time.perf_counter()
    m = read_manifest(url)
    shard = max((s for _, s in m.shards("train")), key=lambda s: s.file_bytes)
    remote.download(prefix.join(shard.file), tmp / "one", shard.file_bytes, shard.sha256)
    return time.perf_counter() - t0


def data_wait_share(cfg: DataConfig, steps: int, micro: int) -> tuple[float, float]:
    """(data wait / step time, mean step ms) of a tiny GPT trained on CPU from `cfg`."""
    import torch

    from pretrain.model import build_model
    from pretrain.model.config import ModelConfig

    src = open_data(cfg, seed=0)
    model = build_model(ModelConfig(family="decoder", d_model=64, n_layers=2, n_heads=4,
                                    d_ff=256, vocab_size=VOCAB, max_seq_len=cfg.seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = train_batches(src, micro, micro, 0, 1, num_workers=0)
    wait = total = 0.0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        loss = model(**batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:                       # the first step warms up
            wait, total = wait + t1 - t0, total + time.perf_counter() - t0
    batches.close()
    return wait / total, total / steps * 1000


def fill_cache(cfg: DataConfig) -> None:
    src = open_data(cfg, seed=0)
    for folder in src.folders:
        for stream in folder.streams.values():
            for ref in stream.shards.refs:
                src.cache.get(ref, pin=False)
    src.cache.close()


def measure(args, work: Path) -> dict:
    local = work / "local"
    write_corpus(local, args.shards, args.shard_mb)
    remote = shared_remote(60)
    remote.create_bucket(args.bucket)
    url = f"s3://{args.bucket}/bench-{os.getpid()}"
    t0 = time.perf_counter()
    copy_folder(str(local), url, workers=4)
    upload_s = time.perf_counter() - t0
    base = {"seq_len": args.seq_len, "num_workers": 0, "prefetch_shards": 4,
            "shuffle_block_shards": args.block_shards}
    out = {"cpu": cpu_model(), "shards": args.shards, "shard_mb": args.shard_mb,
           "block_shards": args.block_shards,
           "upload_mb_per_s": args.shards * args.shard_mb / upload_s}
    cache = work / "cache"
    s3cfg = DataConfig(path=url, cache_dir=str(cache), cache_limit=10 * 2**30, **base)
    out["first_batch_s"], first_refs = first_batch_s(s3cfg, args.micro_batch)
    out["first_batch_shards"] = len(first_refs)
    out["manifest_plus_one_shard_s"] = manifest_plus_one_shard_s(url, work)
    out["manifest_plus_its_shards_s"] = manifest_plus_shards_s(url, first_refs, work)
    shutil.rmtree(cache)
    rate_cold, src = tokens_per_sec(s3cfg, args.seconds, args.micro_batch)
    out["cold_downloaded_mb"] = src.cache.stats.remote_bytes / 2**20
    fill_cache(s3cfg)                  # warm: every shard in the cache first
    warm = alternating_rates({"local": DataConfig(path=str(local), **base), "warm": s3cfg},
                             2 * args.seconds, args.micro_batch)
    rate_local, rate_warm = warm["local"], warm["warm"]
    need = plan_folders(s3cfg, 1, s3cfg.seq_len + 1).need
    bounded = DataConfig(path=url, cache_dir=str(work / "small"), cache_limit=need, **base)
    rate_bounded, bsrc = tokens_per_sec(bounded, args.seconds, args.micro_batch)
    share, step_ms = data_wait_share(s3cfg, args.train_steps, max(1, args.micro_batch // 8))
    out.update(tokens_per_sec_local=rate_local, tokens_per_sec_s3_warm=rate_warm,
               tokens_per_sec_s3_cold=rate_cold, tokens_per_sec_s3_bounded=rate_bounded,
               bounded_limit_mb=need / 2**20, bounded_downloaded_mb=bsrc.cache.stats.remote_bytes
               / 2**20, warm_over_local=warm["warm_over_local"],
               cold_over_local=rate_cold / rate_local,
               bounded_over_local=rate_bounded / rate_local, data_wait_share=share,
               tiny_model_step_ms=step_ms,
               first_batch_over_floor=out["first_batch_s"] / out["manifest_plus_one_shard_s"],
               first_batch_over_its_shards=out["first_batch_s"] /
               out["manifest_plus_its_shards_s"])
    return out


def report(r: dict) -> None:
    print(f"machine: {r['cpu']} ({os.cpu_count()} cores), no GPU used")
    print(f"corpus: {r['shards']} train shards x {r['shard_mb']} MB; upload "
          f"{r['upload_mb_per_s']:.0f} MB/s; every loader shuffles within blocks of "
          f"{r['block_shards']} shards (0: globally)")
    print(f"loader tokens/s: local {r['tokens_per_sec_local']:,.0f}; s3 warm "
          f"{r['tokens_per_sec_s3_warm']:,.0f} ({r['warm_over_local']:.3f}x local in alternating "
          f"rounds, target >= 0.95); s3 cold {r['tokens_per_sec_s3_cold']:,.0f} ({r['cold_over_local']:.3f}x); "
          f"s3 bounded cache {r['bounded_limit_mb']:.0f} MB {r['tokens_per_sec_s3_bounded']:,.0f}"
          f" ({r['bounded_over_local']:.3f}x, {r['bounded_downloaded_mb']:.0f} MB downloaded)")
    print(f"time to first batch (cold cache): {r['first_batch_s']:.2f} s; manifest + one shard "
          f"by hand {r['manifest_plus_one_shard_s']:.2f} s ({r['first_batch_over_floor']:.2f}x,"
          f" target <= 1.2); manifest + the {r['first_batch_shards']} shards the first "
          f"micro-batch reads, 4 at a time by hand "
          f"{r['manifest_plus_its_shards_s']:.2f} s ({r['first_batch_over_its_shards']:.2f}x)")
    print(f"data wait, tiny model on CPU (warm): {100 * r['data_wait_share']:.2f}% of "
          f"{r['tiny_model_step_ms']:.0f} ms steps (target < 1%)")
    print(json.dumps(r))


def main() -> int:
    args = parse_args()
    server = start_server()
    work = Path(tempfile.mkdtemp(prefix="arrowtrain-bench-"))
    try:
        report(measure(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    from data_tools.remote import finalize

    code = main()
    finalize()
    sys.exit(code)
