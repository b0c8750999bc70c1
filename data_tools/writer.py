"""Writing shards (Arrow IPC file format, uncompressed) and the resume checkpoint.

Documents arrive in input order. Each split keeps a pending buffer; when its estimated size
reaches the target, it becomes the next shard: written to `NNNNN.arrow.tmp`, fsynced, renamed.
After each shard, `.resume/state.json` records the input position, the finished shards and the
other splits' pending documents, so a re-run continues from there with identical output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.manifest import SPLITS, sha256_file, write_json_atomic

RESUME_DIR = ".resume"
STATE_NAME = "state.json"
OFFSET_BYTES = 8  # large_list offsets are int64


def tokens_schema(dtype: str, with_text_bytes: bool = False) -> pa.Schema:
    fields = [pa.field("tokens", pa.large_list(pa.from_numpy_dtype(np.dtype(dtype))))]
    if with_text_bytes:
        fields.append(pa.field("text_bytes", pa.int64()))
    return pa.schema(fields)


def numpy_array(values: np.ndarray, dtype: str | None = None) -> pa.Array:
    """A 1-D numpy array as an Arrow array without `pa.array`, which imports pandas when it is
    installed (1-2 s of serial start-up in the single writer, measured)."""
    values = np.ascontiguousarray(values if dtype is None else values.astype(dtype, copy=False))
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                 [None, pa.py_buffer(values)])


def write_arrow(path: Path, docs: list[np.ndarray], dtype: str,
                text_bytes: list[int] | None = None) -> None:
    """One record batch of `docs` (+ optional text_bytes column) via temp file + fsync + rename."""
    lengths = np.fromiter((len(d) for d in docs), np.int64, count=len(docs))  # (D,)
    offsets = np.zeros(len(docs) + 1, np.int64)  # (D + 1,) row starts, large_list offsets
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(docs) if docs else np.zeros(0, dtype)  # (N_tokens,) dtype
    tokens = pa.LargeListArray.from_arrays(numpy_array(offsets), numpy_array(values, dtype))
    columns = [tokens] if text_bytes is None else \
        [tokens, numpy_array(np.asarray(text_bytes, np.int64))]
    schema = tokens_schema(dtype, text_bytes is not None)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        w.write_batch(pa.record_batch(columns, schema=schema))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_pending(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_file(src).read_all()
    col = table.column("tokens").combine_chunks()
    offsets, values = col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=False).copy()
    docs = [values[offsets[i]:offsets[i + 1]] for i in range(len(col))]
    return docs, table.column("text_bytes").to_pylist()


@dataclass
class SplitBuffer:
    name: str
    shards: list[dict] = field(default_factory=list)
    docs: list[np.ndarray] = field(default_factory=list)
    text_bytes: list[int] = field(default_factory=list)
    tokens: int = 0

    def est_bytes(self, itemsize: int) -> int:
        return self.tokens * itemsize + (len(self.docs) + 1) * OFFSET_BYTES


class ShardWriter:
    def __init__(self, datadir: Path, dtype: str, shard_bytes: int):
        self.dir, self.dtype, self.shard_bytes = Path(datadir), dtype, shard_bytes
        self.itemsize = np.dtype(dtype).itemsize
        self.splits = {s: SplitBuffer(s) for s in SPLITS}
        self.checkpoints = 0

    def add(self, split: str, tokens: np.ndarray, text_bytes: int) -> bool:
        """Buffer one document; True when the split's buffer has reached the shard size."""
        buf = self.splits[split]
        buf.docs.append(tokens)
        buf.text_bytes.append(text_bytes)
        buf.tokens += len(tokens)
        return buf.est_bytes(self.itemsize) >= self.shard_bytes

    def flush(self, split: str) -> dict | None:
        """Write the split's buffer as its next shard; returns the shard's manifest entry."""
        buf = self.splits[split]
        if not buf.docs:
            return None
        rel = f"{split}/{len(buf.shards):05d}.arrow"
        path = self.dir / rel
        write_arrow(path, buf.docs, self.dtype)
        entry = {"file": rel, "documents": len(buf.docs), "tokens": buf.tokens,
                 "text_bytes": sum(buf.text_bytes), "file_bytes": path.stat().st_size,
                 "sha256": sha256_file(path)}
        buf.shards.append(entry)
        buf.docs, buf.text_bytes, buf.tokens = [], [], 0
        return entry

    def checkpoint(self, run_key: dict, cursor: tuple[int, int], skipped: dict) -> None:
        """Record progress after a shard: input position, shards, other splits' pending docs."""
        rdir = self.dir / RESUME_DIR
        self.checkpoints += 1
        pending = {}
        for name, buf in self.splits.items():
            if buf.docs:
                path = rdir / f"pending-{name}-{self.checkpoints:06d}.arrow"
                write_arrow(path, buf.docs, self.dtype, buf.text_bytes)
                pending[name] = {"file": path.name, "sha256": sha256_file(path)}
        state = {"run_key": run_key, "cursor": list(cursor), "skipped": skipped,
                 "shards": {n: b.shards for n, b in self.splits.items()}, "pending": pending}
        write_json_atomic(rdir / STATE_NAME, state)
        keep = {p["file"] for p in pending.values()} | {STATE_NAME}
        for stale in rdir.iterdir():
            if stale.name not in keep:
                stale.unlink()

    def restore(self, state: dict) -> None:
        """Load finished shards and pending documents from a verified checkpoint."""
        rdir = self.dir / RESUME_DIR
        for name, buf in self.splits.items():
            buf.shards = list(state["shards"].get(name, []))
            if name in state["pending"]:
                buf.docs, buf.text_bytes = read_pending(rdir / state["pending"][name]["file"])
                buf.tokens = sum(len(d) for d in buf.docs)


def load_state(datadir: Path) -> dict | None:
    path = Path(datadir) / RESUME_DIR / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def state_problem(datadir: Path, state: dict) -> str | None:
    """Why a checkpoint cannot be used (a shard or pending file missing or changed), or None."""
    rdir = Path(datadir) / RESUME_DIR
    for shards in state["shards"].values():
        for s in shards:
            p = Path(datadir) / s["file"]
            if not p.is_file() or sha256_file(p) != s["sha256"]:
                return f"{p} is missing or changed"
    for info in state["pending"].values():
        p = rdir / info["file"]
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            return f"{p} is missing or changed"
    return None
