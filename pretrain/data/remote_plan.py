"""How big the node cache must be, and each process's share of it (torch-free: the pre-flight
runs it before any rank starts, the ranks again at open).

A process (a rank, or one of its DataLoader workers) maps at most `budget` shards at once;
every process of the node together must fit, plus the read-ahead:

    need = largest shard x (processes per node x span + data.prefetch_shards) + tokenizer

where `span` is the most shard files one sample can touch (a packed window crossing shard
boundaries; 1 for pairs), processes per node = ranks per node x (1 + data.num_workers), and
`tokenizer` the bytes of the folders' tokenizer.json, which the cache holds too (pinned while a
process reads the folder).
A smaller `data.cache_limit` is refused naming the number to use.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.manifest import Manifest
from pretrain.data.config import DataConfig

log = logging.getLogger("pretrain.data")

DEFAULT_FREE_SHARE = 0.5   # the default limit: this share of the free space (plus the cache's own)


@dataclass(frozen=True)
class CachePlan:
    cache_dir: Path
    limit: int
    budget: int              # shards one process may map at once
    need: int                # the smallest limit that works
    largest: int             # bytes of the largest shard
    span: int
    processes: int           # per node
    default_limit: bool
    meta_bytes: int = 0      # the tokenizer copy the cache holds beside the shards
    block_shards: int = 0    # data.shuffle_block_shards, resolved
    prefetch: int = 0

    def block_advice(self) -> str | None:
        """A limit that works but holds less than one shuffle block (the node's ranks read one
        block at a time): shards are downloaded again within a block, and an outage inside a
        step can end a rank with exit 1 rather than 75."""
        block = self.largest * (self.block_shards + 1 + self.prefetch) + self.meta_bytes
        if not self.block_shards or self.limit >= block:
            return None
        return (f"data.cache_limit {human_bytes(self.limit)} holds less than one shuffle block "
                f"({self.block_shards} shards + read-ahead: {human_bytes(block)}): shards will "
                f"be downloaded again within a block; data.cache_limit={block} or more avoids it")

    def problem(self) -> str | None:
        if self.limit >= self.need:
            return None
        how = " (the default: half of the free space on its disk)" if self.default_limit else ""
        return (f"data.cache_limit {human_bytes(self.limit)}{how} is smaller than one step "
                f"needs: largest shard {human_bytes(self.largest)} x ({self.processes} "
                f"process(es) per node x {self.span} shard(s) per sample + data.prefetch_shards"
                f") + tokenizer {human_bytes(self.meta_bytes)} = {human_bytes(self.need)}; "
                f"set data.cache_limit={self.need} (or more), or "
                "lower data.prefetch_shards / data.num_workers"
                + (f", or free space under {self.cache_dir}" if self.default_limit else ""))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TMPDIR") or "/tmp") / "arrowtrain-cache"


def ranks_per_node(world_size: int, env: dict[str, str] | None = None) -> int:
    """Ranks sharing this node (torchrun/our launcher, DeepSpeed's, SLURM), else world size."""
    env = os.environ if env is None else env
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if env.get(var, "").isdigit() and int(env[var]) > 0:
            return int(env[var])
    tasks = env.get("SLURM_TASKS_PER_NODE", "").split("(")[0]
    return int(tasks) if tasks.isdigit() and int(tasks) > 0 else max(1, world_size)


def sample_span(manifest: Manifest, window: int | None) -> int:
    """The most shard files one sample of `window` packed tokens can touch."""
    if window is None:
        return 1
    span = 1
    for info in manifest.splits.values():
        lengths = np.array([s.tokens + s.documents for s in info.shards if s.documents],
                           np.int64)                       # stream tokens per file
        if len(lengths) < 2:
            continue
        bases = np.concatenate([[0], np.cumsum(lengths)])
        # a window whose first token is the last of file i reaches position bases[i+1] + w - 2
        last = np.searchsorted(bases, bases[1:] + window - 2, "right") - 1
        span = max(span, int((np.minimum(last, len(lengths) - 1) - np.arange(len(lengths))
                              ).max()) + 1)
    return span


def cache_usage(cache_dir: Path) -> int:
    total = 0
    for root, _, files in os.walk(cache_dir):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


def default_limit(cache_dir: Path) -> int:
    """Half of what is free on cache_dir's disk, counting what the cache holds already."""
    probe = cache_dir
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return int((free + (cache_usage(cache_dir) if cache_dir.exists() else 0)) * DEFAULT_FREE_SHARE)


def plan_cache(cfg: DataConfig, manifests: list[Manifest], ranks: int, window: int | None,
               limit: int | None = None, meta_bytes: int = 0) -> CachePlan:
    """The cache of the s3:// folders' `manifests` for `ranks` ranks per node, samples of
    `window` packed tokens (None: pairs; the objective's sample_window); `limit`: the one
    already chosen, else data.cache_limit or the default; `meta_bytes`: the tokenizer.json
    the cache holds beside the shards (the folders share one)."""
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    largest = max((s.file_bytes for m in manifests for _, s in m.shards()), default=1)
    span = max((sample_span(m, window) for m in manifests), default=1)
    processes = max(1, ranks) * (1 + cfg.num_workers)
    need = largest * (processes * span + cfg.prefetch_shards) + meta_bytes
    if limit is None:
        limit = cfg.cache_limit if cfg.cache_limit is not None else default_limit(cache_dir)
    budget = max(span, (limit - meta_bytes - cfg.prefetch_shards * largest)
                 // (processes * largest))
    return CachePlan(cache_dir, int(limit), int(budget), int(need), int(largest), span,
                     processes, cfg.cache_limit is None, int(meta_bytes), cfg.block_shards(),
                     cfg.prefetch_shards)


def plan_folders(cfg: DataConfig, ranks: int, window: int | None,
                 limit: int | None = None) -> CachePlan:
    """plan_cache for the s3:// folders of `cfg`, read from object storage (manifests and
    tokenizer sizes; benchmarks and tests pick the smallest limit with it)."""
    from data_tools.remote_folder import open_remote_folder

    opened = [open_remote_folder(p) for p, _ in cfg.folders() if p.startswith("s3://")]
    meta = max((f.objects[f.manifest.tokenizer.file] for f in opened), default=0)
    return plan_cache(cfg, [f.manifest for f in opened], ranks, window, limit, meta)


def open_cache(cfg: DataConfig):
    """This process's node cache for the run's s3:// folders (its budget is set by
    size_cache once the manifests are read; 1 shard until then)."""
    from pretrain.data.cache import NodeCache

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    limit = cfg.cache_limit if cfg.cache_limit is not None else default_limit(cache_dir)
    return NodeCache(cache_dir, limit, 1, cfg.remote_timeout)


def size_cache(cache, cfg: DataConfig, manifests: list[Manifest],
               window: int | None, meta_bytes: int = 0) -> CachePlan:
    """Check the limit against what one step needs (DataError naming the number to use) and
    give this process its share (budget)."""
    from pretrain.data.stream import DataError

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    plan = plan_cache(cfg, manifests, ranks_per_node(world), window, cache.limit, meta_bytes)
    if problem := plan.problem():
        raise DataError(problem)
    if (advice := plan.block_advice()) and os.environ.get("RANK", "0") == "0":
        log.warning("%s", advice)
    cache.budget = plan.budget
    return plan
