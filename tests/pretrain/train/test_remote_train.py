"""Training from s3:// on 2 CPU ranks with real DeepSpeed and a real Ceph RGW: the data comes
through `data copy` from a folder resharded into many small shards (the same token stream as
`tiny_data`, so the same batches); an outage longer than data.remote_timeout saves a checkpoint
and exits 75 on both ranks; the resume, with the cache emptied and held at the smallest limit
allowed (polled during the run), finishes with the losses of the uninterrupted local run bit
for bit. No secret lands in the run folder, the cache or the logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.ceph import assert_no_secret
from helpers.dist import REPO, start_ranks

from data_tools.folder import read_manifest
from pretrain.data import DataConfig
from pretrain.data.remote_plan import plan_folders


def _data_tools(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "data_tools", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def small_shards(tiny_data, tmp_path_factory) -> Path:
    """tiny_data's corpus and tokenizer, sharded into ~8 KB shards: the same packed stream."""
    out = tmp_path_factory.mktemp("small_shards") / "data"
    root = tiny_data.parent
    _data_tools("shard", str(root / "corpus.jsonl"), "--tokenizer",
                str(root / "tok" / "tokenizer.json"), "--out", str(out), "--val-fraction",
                "0.05", "--workers", "1", "--shard-size", "8KB")
    assert len(read_manifest(out).splits["train"].shards) >= 8
    return out


def _poll_peak(cache: Path, ranks, peak: list[int]) -> None:
    while any(p.poll() is None for p in ranks.procs):
        total = 0
        for sub in ("shards", "meta"):
            with contextlib.suppress(OSError):
                for e in list(os.scandir(cache / sub)):
                    with contextlib.suppress(OSError):      # deleted since the listing
                        total += e.stat().st_size
        peak[0] = max(peak[0], total)
        time.sleep(0.005)


def _run(args, log_dir, env, cache, peak, until_rows=None, proxy=None, run=None):
    import threading

    ranks = start_ranks(args, log_dir, env=env)
    poll = threading.Thread(target=_poll_peak, args=(cache, ranks, peak), daemon=True)
    poll.start()
    if until_rows is not None:              # then the store goes away
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (
                (run / "metrics.jsonl").is_file() and
                len((run / "metrics.jsonl").read_text().splitlines()) >= until_rows):
            assert all(p.poll() is None for p in ranks.procs), ranks.logs()
            time.sleep(0.02)
        proxy.set_down(True)
    codes = ranks.wait(300)
    poll.join(timeout=10)
    return codes, ranks


def test_outage_saves_and_exits_75_then_a_cold_resume_is_exact(
        small_shards, s3, s3_proxy, straight_run, runs, tmp_path):
    url = s3.url("tiny")
    env = {**os.environ, **s3.env, "PYTHONPATH": str(REPO)}
    _data_tools("copy", str(small_shards), url, "--workers", "4", env=env)
    cache, run = tmp_path / "cache", tmp_path / "run"
    # the local reference shuffles globally: so does this run (block shuffles: test_order,
    # tests/pretrain/data/test_remote_loader.py)
    cfg = DataConfig(path=url, seq_len=32, num_workers=0, shuffle_block_shards=0)
    limit = plan_folders(cfg, 2, cfg.seq_len + 1).need     # the smallest allowed
    common = (f"data.cache_dir={cache}", "data.remote_timeout=4", "data.shuffle_block_shards=0")
    # the outage run's cache holds the corpus: below what a step of both ranks reads, a shard
    # checked at the step boundary can be evicted before its gather, and an outage right then
    # ends that rank with exit 1 (docs/object-storage.md, Faults), not 75
    args = runs.small_run_args(run, url, 2, *common, "data.cache_limit=100MB")
    codes, first = _run(args, tmp_path / "logs1", env, cache, [0], until_rows=2,
                        proxy=s3_proxy, run=run)
    assert codes == [75, 75], first.logs()
    assert "object storage unavailable for data.remote_timeout" in first.logs(10**6)
    stopped = runs.read_metrics(run)[-1]["step"]
    assert (run / "checkpoints" / "latest").is_file()

    s3_proxy.set_down(False)
    shutil.rmtree(cache)                                       # a cold cache on resume
    peak = [0]                                                 # ... at the smallest limit
    args = runs.small_run_args(run, url, 2, *common, f"data.cache_limit={limit}")
    codes, second = _run(args, tmp_path / "logs2", env, cache, peak)
    assert codes == [0, 0], second.logs()
    assert f"at step {stopped}" in second.logs(10**6)

    assert runs.train_losses(run) == runs.train_losses(straight_run(2))
    print(f"cache peak {peak[0]} B during the resumed run, limit {limit} B")   # (-rP)
    assert 0 < peak[0] <= limit, (peak[0], limit)
    rows = [r for r in runs.read_metrics(run) if "loss" in r]
    assert all(0 <= r["cache_hit_rate"] <= 1 and r["remote_bytes"] > 0 and
               r["data_wait_ms"] >= 0 for r in rows)
    assert_no_secret([run, cache, tmp_path / "logs1", tmp_path / "logs2"])
    status = subprocess.run([sys.executable, "-m", "launch", "status", str(run)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)
    assert f"data: {url} (object storage; node cache {cache}" in status.stdout, status.stdout

