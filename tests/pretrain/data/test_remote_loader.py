"""The loader over s3:// (a real Ceph RGW): batches bitwise equal to the local folder's for any
cache limit, read-ahead depth, rank and restart point (cold cache); the node cache never above
its limit (polled while batches are read); one download per shard and node; a too small limit
refused naming the number; start-up errors naming what is wrong; eviction by farthest next use.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.copy import copy_folder
from data_tools.folder import read_manifest
from data_tools.remote import S3Path
from pretrain.data import DataConfig, DataError, train_batches
from pretrain.data.cache import NodeCache, ShardRef
from pretrain.data.remote_plan import plan_folders
from pretrain.objectives import open_data

REPO = Path(__file__).resolve().parents[3]
SEQ = 8


@pytest.fixture(scope="module")
def many_shards(make_folder, tmp_path_factory) -> Path:
    """12 small train shards (several record batches each) and 2 val shards."""
    return make_folder(tmp_path_factory.mktemp("remote") / "a", train_tokens=(900,) * 12,
                       val_tokens=(300, 300))


@pytest.fixture
def uploaded(s3, many_shards) -> str:
    url = s3.url("data/a")
    copy_folder(str(many_shards), url)
    return url


class CachePoll:
    """Polls the cache's data (shards/ and meta/) every few ms from a thread: the peak."""

    def __init__(self, root: Path):
        self.root, self.peak, self._stop = root, 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _size(self) -> int:
        total = 0
        for sub in ("shards", "meta"):
            try:
                entries = list(os.scandir(self.root / sub))
            except OSError:
                continue
            for e in entries:
                with contextlib.suppress(OSError):     # deleted between listing and stat
                    total += e.stat().st_size
        return total

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._size())
            time.sleep(0.001)

    def stop(self) -> int:
        self._stop = True
        self._thread.join()
        return max(self.peak, self._size())


def _need(url: str, **kw) -> int:
    cfg = DataConfig(path=url, seq_len=SEQ, **kw)
    return plan_folders(cfg, 1, cfg.seq_len + 1).need


@pytest.mark.parametrize("limit,prefetch,workers,blocks", [
    ("need", 0, 0, "auto"), ("need", 2, 1, 0), (None, 3, 0, 3)])
def test_batches_are_bitwise_the_local_ones(uploaded, many_shards, tmp_path, limit, prefetch,
                                            workers, blocks):
    """... with the same shuffle (auto: 8 shards per block over s3://, given to the local
    folder as a number; 0: a global shuffle; 3)."""
    kw = {"prefetch_shards": prefetch, "num_workers": workers, "shuffle_block_shards": blocks}
    cache_limit = _need(uploaded, **kw) if limit == "need" else None
    same = DataConfig(path=uploaded, shuffle_block_shards=blocks).block_shards()
    local = open_data(DataConfig(path=str(many_shards), seq_len=SEQ, num_workers=0,
                                 shuffle_block_shards=same), seed=1)
    poll = CachePoll(tmp_path / "cache")
    for world in (1, 2):
        for rank in range(world):
            remote = open_data(DataConfig(path=uploaded, seq_len=SEQ, cache_limit=cache_limit,
                                          cache_dir=str(tmp_path / "cache"), **kw), seed=1)
            # a restart at step 2 (cold cache for the first rank), 12 micro-batches
            want = train_batches(local, 8, 2, rank, world, consumed_samples=16)
            got = train_batches(remote, 8, 2, rank, world, consumed_samples=16)
            for _ in range(12):
                a, b = next(want), next(got)
                assert all(np.array_equal(a[k], b[k]) for k in a)
            got.close()
            idx = np.arange(local.num_samples("val"))
            a, b = (s.batch("val", idx, np.zeros_like(idx)) for s in (local, remote))
            assert all(np.array_equal(a[k], b[k]) for k in a)
            remote.cache.close()
    peak = poll.stop()
    print(f"cache peak {peak} B, limit {cache_limit}, downloads {remote.cache.stats.downloads}, "
          f"evictions {remote.cache.stats.evictions}")         # figures for the report (-rP)
    if cache_limit is not None:
        assert 0 < peak <= cache_limit, (peak, cache_limit)
        assert remote.cache.stats.evictions > 0 or remote.cache.stats.downloads == 0


def test_a_cache_of_one_shuffle_block_downloads_each_shard_about_once(uploaded, tmp_path):
    """data.shuffle_block_shards 3 over 12 shards: an epoch of training batches through a cache
    that holds one block and the read-ahead downloads each shard about once (a global shuffle
    through the same cache would fetch a shard for nearly every sample)."""
    cfg = DataConfig(path=uploaded, seq_len=SEQ, num_workers=0, prefetch_shards=2,
                     shuffle_block_shards=3, cache_dir=str(tmp_path / "c"))
    plan = plan_folders(cfg, 1, SEQ + 1)
    cfg = cfg.model_copy(update={"cache_limit": plan.need + 3 * plan.largest})
    src = open_data(cfg, seed=1)
    batches = train_batches(src, 8, 8, 0, 1)
    for _ in range(src.num_samples("train") // 8):
        next(batches)
    batches.close()
    shards = len(read_manifest(uploaded).splits["train"].shards)
    print(f"{shards} shards, {src.cache.stats.downloads - 1} shard downloads in an epoch")
    assert shards <= src.cache.stats.downloads - 1 <= 2 * shards   # - 1: the tokenizer


def test_ranks_of_a_node_download_each_shard_once(uploaded, s3, s3_proxy, tmp_path):
    """Two rank processes read every train shard through one node cache: one GET per shard
    (the shards are smaller than one ranged GET)."""
    code = ("import sys, numpy as np\n"
            "from pretrain.data import DataConfig\nfrom pretrain.objectives import open_data\n"
            f"src = open_data(DataConfig(path={uploaded!r}, seq_len={SEQ}, num_workers=0, "
            f"cache_dir={str(tmp_path / 'cache')!r}), seed=1)\n"
            "rank = int(sys.argv[1]); n = src.num_samples('train')\n"
            "for start in range(rank, n, 64):\n"
            "    idx = np.arange(start, min(n, start + 64))\n"
            "    src.batch('train', idx, np.zeros_like(idx))\n")
    env = {**os.environ, **s3.env, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}
    s3_proxy.clear()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r)], env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    gets = s3_proxy.gets(f"{s3.name}/data/a/train/")
    shards = [s.file for _, s in read_manifest(uploaded).shards("train")]
    assert sorted(gets) == sorted(f"{s3.name}/data/a/{f}" for f in shards)
    print(f"GETs per shard, 2 ranks sharing the node cache: {sorted(gets.values())}")
    assert set(gets.values()) == {1}, gets      # N ranks, one download each


def test_a_limit_smaller_than_one_step_is_refused_with_the_number(uploaded, tmp_path):
    need = _need(uploaded)
    with pytest.raises(DataError, match=f"set data.cache_limit={need} "):
        open_data(DataConfig(path=uploaded, seq_len=SEQ, cache_limit=need - 1,
                             cache_dir=str(tmp_path / "c")), seed=1)


def test_preflight_refuses_it_before_any_rank(uploaded, tmp_path):
    from pretrain.configlib import ConfigError
    from pretrain.train.preflight import check_run

    need = _need(uploaded, num_workers=0)
    with pytest.raises(ConfigError) as e:
        check_run(REPO / "configs" / "gpt-tiny.yaml",
                  [f"data.path={uploaded}", f"data.seq_len={SEQ}", "data.cache_limit=1000",
                   f"run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'c'}",
                   "eval.max_samples=2", "train.micro_batch_size=1", "train.global_batch_size=2"],
                  world_size=2, ranks_per_node=1)
    assert f"set data.cache_limit={need} " in str(e.value)


def test_start_errors_name_what_is_wrong(uploaded, s3, monkeypatch, tmp_path):
    def opened(url: str = uploaded, **kw):
        return open_data(DataConfig(path=url, seq_len=SEQ, cache_dir=str(tmp_path / "c"),
                                    remote_timeout=3, **kw), seed=1)

    with pytest.raises(DataError, match="no such bucket 'no-such-bucket-at'"):
        opened("s3://no-such-bucket-at/x")
    with pytest.raises(DataError, match=r"manifest.json: not found"):
        opened(s3.url("nothing/here"))
    s3.remote.delete(S3Path.parse(uploaded).join("train/00003.arrow"))
    with pytest.raises(DataError, match=r"train/00003.arrow: listed in the manifest, missing"):
        opened()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-4711")
    with pytest.raises(DataError, match="access denied") as e:
        opened()
    assert "not-the-secret-4711" not in str(e.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(DataError, match="unreachable"):
        opened()


def test_changed_object_is_retried_once_then_named(uploaded, s3, many_shards, tmp_path):
    src = open_data(DataConfig(path=uploaded, seq_len=SEQ, num_workers=0,
                               cache_dir=str(tmp_path / "c")), seed=1)
    target = S3Path.parse(uploaded).join("train/00000.arrow")
    size = (many_shards / "train" / "00000.arrow").stat().st_size
    s3.remote.put_bytes(target, b"\0" * size)              # same size, other bytes
    with pytest.raises(DataError) as e:
        src.batch("train", np.arange(4), np.zeros(4, np.int64))
    assert f"bucket '{s3.name}', key 'data/a/train/00000.arrow'" in str(e.value)
    assert "differ from the manifest twice" in str(e.value)
    assert not [p for p in (tmp_path / "c" / "shards").iterdir()
                if p.name.startswith(".")]                # no temp file left behind


def _put_shards(s3, prefix: str, n: int) -> list[ShardRef]:
    """n objects of 1000 bytes (object i holds byte i) as the cache's shard references."""
    import hashlib

    refs = []
    for i in range(n):
        data = bytes([i]) * 1000
        path = S3Path.parse(s3.url(f"{prefix}/{i}"))
        s3.remote.put_bytes(path, data)
        refs.append(ShardRef(path, 1000, hashlib.sha256(data).hexdigest()))
    return refs


def test_eviction_drops_the_farthest_next_use_first(s3, tmp_path):
    refs = _put_shards(s3, "e", 4)
    cache = NodeCache(tmp_path / "c", limit_bytes=3000, budget=1, timeout_s=10)
    for ref in refs[:3]:
        cache.get(ref, pin=False)
    cache.announce({refs[0].sha256: 30, refs[1].sha256: 10, refs[2].sha256: 20,
                    refs[3].sha256: 40})
    assert cache.get(refs[3], pin=False, urgent=False) is None   # would drop sooner uses
    cache.get(refs[3], pin=False)                                # needed now: drops refs[0]
    assert [cache.present(r.sha256) for r in refs] == [False, True, True, True]
    cache.get(refs[0], pin=True)                                  # now refs[3] (40) goes
    assert [cache.present(r.sha256) for r in refs] == [True, True, True, False]
    cache.announce({})
    cache.get(refs[3], pin=False)   # refs[0] pinned: the least recently used other one goes
    assert cache.present(refs[0].sha256) and cache.present(refs[3].sha256)
    assert cache.used_bytes() <= 3000


def test_a_read_ahead_waiting_for_room_ends_when_its_loader_closes(s3, tmp_path):
    """The cache is full of pinned shards, so an urgent fetch waits for room (up to the data
    timeout). Cancelled, it gives up within a cache poll; the read-ahead cancels its own fetch
    on close(), which returned only after its 10 s join before."""
    from pretrain.data.prefetch import Feeder

    refs = _put_shards(s3, "w", 3)
    cache = NodeCache(tmp_path / "c", limit_bytes=2000, budget=1, timeout_s=30)
    for ref in refs[:2]:
        cache.get(ref, pin=True)                       # held by "the consumer": no room
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert cache.get(refs[2], pin=False, cancelled=stop.is_set) is None
    assert time.monotonic() - t0 < 3
    feeder = Feeder(cache, lambda k: [refs[2]], lambda k: k, depth=0, total_shards=3)
    time.sleep(0.3)                                    # its fetch is waiting for room now
    t0 = time.monotonic()
    feeder.close()
    assert time.monotonic() - t0 < 3 and not feeder._thread.is_alive()
    assert not cache.present(refs[2].sha256)


class _WaitsForRoom(torch.utils.data.Dataset):
    """Item 0 at once; every later item waits for a shard with no room for it in the cache."""

    def __init__(self, cache: NodeCache, ref: ShardRef):
        self.src = types.SimpleNamespace(cache=cache)   # where batches finds a source's cache
        self.ref = ref

    def __len__(self) -> int:
        return 8

    def __getitem__(self, k: int) -> dict:
        if k:
            self.src.cache.get(self.ref, pin=True)
        return {"k": torch.tensor([k])}


def test_a_dataloader_worker_waiting_for_room_ends_when_its_loader_closes(s3, tmp_path):
    """data.num_workers > 0: a worker prefetching a batch whose shard waits for room gives up
    when the loader closes, so torch's shutdown does not wait its 5 s join before killing it."""
    from pretrain.data.batches import _iterate

    refs = _put_shards(s3, "dw", 3)
    cache = NodeCache(tmp_path / "c", limit_bytes=2000, budget=1, timeout_s=30)
    for ref in refs[:2]:
        cache.get(ref, pin=True)                       # held by the main process: no room
    batches = _iterate(_WaitsForRoom(cache, refs[2]), range(8), num_workers=1,
                       pin_memory=False, prefetch_factor=2)
    assert next(batches)["k"].tolist() == [0]
    time.sleep(0.5)                                    # the worker waits for item 1's shard
    t0 = time.monotonic()
    batches.close()
    assert time.monotonic() - t0 < 2.5


def test_a_limit_below_one_shuffle_block_is_warned_about_with_the_number():
    from pretrain.data.remote_plan import CachePlan

    def plan(limit: int, blocks: int = 8) -> CachePlan:
        return CachePlan(Path("/c"), limit, budget=2, need=50_000, largest=8_000, span=2,
                         processes=2, default_limit=False, meta_bytes=30_000,
                         block_shards=blocks, prefetch=2)

    block = 8_000 * (8 + 1 + 2) + 30_000
    assert f"data.cache_limit={block} or more" in plan(block - 1).block_advice()
    assert plan(block).block_advice() is None and plan(60_000, blocks=0).block_advice() is None
