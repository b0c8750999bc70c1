"""Writing shards (Arrow IPC file format, uncompressed) and the resume checkpoint.

Documents arrive in input order. Each split keeps a pending buffer; when its estimated size
reaches the target, it becomes the next shard: written to a temp name, fsynced, renamed
(data_tools.atomic). After each shard, `.resume/state.json` records the input position, the
finished shards, the splits' pending documents and the val candidates still held (see
data_tools.split), so a re-run continues from there with identical output.

`write_shard` / `write_pair_shard` are also the writers for anyone who has token ids already
(tests, benchmarks). A pair shard has two columns, `source` and `target`, one pair per row; like
a document, neither side stores an EOS (the loader appends one to each side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.atomic import atomic_path, write_json_atomic
from data_tools.manifest import SPLITS, ShardEntry, sha256_file
from data_tools.split import Doc

RESUME_DIR = ".resume"
STATE_NAME = "state.json"
OFFSET_BYTES = 8  # large_list offsets are int64
HELD = "held"  # name of the val candidates' pending file


def tokens_schema(dtype: str, columns: tuple[str, ...] = ("tokens",)) -> pa.Schema:
    """The schema of a shard: `tokens: large_list<dtype>` (pairs: `source` and `target`)."""
    value = pa.large_list(pa.from_numpy_dtype(np.dtype(dtype)))
    return pa.schema([pa.field(name, value) for name in columns])


def numpy_array(values: np.ndarray, dtype: str | None = None) -> pa.Array:
    """A 1-D numpy array as an Arrow array without `pa.array`, which imports pandas when it is
    installed (1-2 s of serial start-up in the single writer, measured)."""
    values = np.ascontiguousarray(values if dtype is None else values.astype(dtype, copy=False))
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                 [None, pa.py_buffer(values)])


def offsets_of(docs: list[np.ndarray]) -> np.ndarray:
    """(D + 1,) int64 row starts of `docs` laid end to end (large_list offsets)."""
    lengths = np.fromiter((len(d) for d in docs), np.int64, count=len(docs))  # (D,)
    offsets = np.zeros(len(docs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def write_arrow(path: Path, offsets: np.ndarray, values: np.ndarray, dtype: str,
                extra: dict[str, np.ndarray] | None = None, batch_rows: int | None = None) -> None:
    """Documents as `tokens: large_list<dtype>` (offsets (D + 1,) from 0, values (N,)) plus
    optional extra columns (D,), in record batches of `batch_rows` (default: one batch),
    written atomically."""
    write_lists(path, {"tokens": (offsets, values)}, dtype, extra, batch_rows)


def write_lists(path: Path, lists: dict[str, tuple[np.ndarray, np.ndarray]], dtype: str,
                extra: dict[str, np.ndarray] | None = None, batch_rows: int | None = None) -> None:
    """One `large_list<dtype>` column per entry of `lists` (name -> (offsets, values)), then
    the extra columns; see write_arrow."""
    names, columns = [], []
    for name, (offsets, values) in lists.items():
        names.append(name)
        columns.append(pa.LargeListArray.from_arrays(numpy_array(offsets, "int64"),
                                                     numpy_array(values, dtype)))
    tokens = columns[0]
    for name, col in (extra or {}).items():
        names.append(name)
        columns.append(numpy_array(col))
    table = pa.table(columns, names=names)
    schema = table.schema
    step = batch_rows or max(1, len(tokens))
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, schema) as w:
        for start in range(0, max(1, len(tokens)), step):
            w.write_batch(pa.record_batch([c.slice(start, step) for c in columns], schema=schema))


def write_shard(datadir: Path, rel: str, offsets: np.ndarray, values: np.ndarray, dtype: str,
                text_bytes: int, batch_rows: int | None = None) -> ShardEntry:
    """Write shard file DATADIR/rel; returns its manifest entry (sizes, counts, sha256)."""
    path = Path(datadir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_arrow(path, offsets, values, dtype, batch_rows=batch_rows)
    return ShardEntry(file=rel, documents=len(offsets) - 1,
                      tokens=int(offsets[-1] - offsets[0]), text_bytes=int(text_bytes),
                      file_bytes=path.stat().st_size, sha256=sha256_file(path))


def write_pair_shard(datadir: Path, rel: str, source: tuple[np.ndarray, np.ndarray],
                     target: tuple[np.ndarray, np.ndarray], dtype: str, text_bytes: int,
                     batch_rows: int | None = None) -> ShardEntry:
    """Write pair shard DATADIR/rel: `source` and `target` as (offsets (P + 1,), values)."""
    path = Path(datadir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lists(path, {"source": source, "target": target}, dtype, batch_rows=batch_rows)
    ns, nt = (int(o[-1] - o[0]) for o, _ in (source, target))
    return ShardEntry(file=rel, documents=len(source[0]) - 1, tokens=ns + nt,
                      text_bytes=int(text_bytes), file_bytes=path.stat().st_size,
                      sha256=sha256_file(path), source_tokens=ns, target_tokens=nt)


def _concat(docs: list[np.ndarray], dtype: str) -> np.ndarray:
    return np.concatenate(docs) if docs else np.zeros(0, dtype)


def _sides(docs: list[Doc], dtype: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Pairs (tokens = source then target, cut at source_len) as two (offsets, values)."""
    src = [d.tokens[:d.source_len] for d in docs]
    tgt = [d.tokens[d.source_len:] for d in docs]
    return (offsets_of(src), _concat(src, dtype)), (offsets_of(tgt), _concat(tgt, dtype))


def write_docs(path: Path, docs: list[Doc], dtype: str) -> None:
    """Pending documents with everything needed to take them up again."""
    extra = {"text_bytes": np.array([d.text_bytes for d in docs], np.int64),
             "hash": np.array([d.hash for d in docs], np.uint64),
             "file_index": np.array([d.pos[0] for d in docs], np.int64),
             "record_index": np.array([d.pos[1] for d in docs], np.int64)}
    if docs[0].source_len is not None:
        extra["source_len"] = np.array([d.source_len for d in docs], np.int64)
    tokens = [d.tokens for d in docs]
    write_arrow(path, offsets_of(tokens), _concat(tokens, dtype), dtype, extra)


def read_docs(path: Path) -> list[Doc]:
    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_file(src).read_all()
    col = table.column("tokens").combine_chunks()
    offsets, values = col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=False).copy()
    c = {k: table.column(k).to_pylist() for k in ("text_bytes", "hash", "file_index",
                                                   "record_index")}
    cut = table.column("source_len").to_pylist() if "source_len" in table.column_names else \
        [None] * len(col)
    return [Doc(c["hash"][i], (c["file_index"][i], c["record_index"][i]),
                values[offsets[i]:offsets[i + 1]], c["text_bytes"][i], cut[i])
            for i in range(len(col))]


@dataclass
class SplitBuffer:
    name: str
    shards: list[ShardEntry] = field(default_factory=list)
    docs: list[Doc] = field(default_factory=list)
    tokens: int = 0

    def est_bytes(self, itemsize: int, columns: int = 1) -> int:
        return self.tokens * itemsize + (len(self.docs) + 1) * OFFSET_BYTES * columns


class ShardWriter:
    def __init__(self, datadir: Path, dtype: str, shard_bytes: int, pairs: bool = False):
        self.dir, self.dtype, self.shard_bytes = Path(datadir), dtype, shard_bytes
        self.pairs = pairs  # documents are pairs: write `source` and `target` columns
        self.itemsize = np.dtype(dtype).itemsize
        self.splits = {s: SplitBuffer(s) for s in SPLITS}
        self.checkpoints = 0

    def add(self, split: str, doc: Doc) -> bool:
        """Buffer one document; True when the split's buffer has reached the shard size."""
        buf = self.splits[split]
        buf.docs.append(doc)
        buf.tokens += len(doc.tokens)
        return buf.est_bytes(self.itemsize, 2 if self.pairs else 1) >= self.shard_bytes

    def flush(self, split: str) -> ShardEntry | None:
        """Write the split's buffer as its next shard; returns the shard's manifest entry."""
        buf = self.splits[split]
        if not buf.docs:
            return None
        rel = f"{split}/{len(buf.shards):05d}.arrow"
        text_bytes = sum(d.text_bytes for d in buf.docs)
        if self.pairs:
            entry = write_pair_shard(self.dir, rel, *_sides(buf.docs, self.dtype), self.dtype,
                                     text_bytes)
        else:
            tokens = [d.tokens for d in buf.docs]
            entry = write_shard(self.dir, rel, offsets_of(tokens), _concat(tokens, self.dtype),
                                self.dtype, text_bytes)
        buf.shards.append(entry)
        buf.docs, buf.tokens = [], 0
        return entry

    def checkpoint(self, run_key: dict, cursor: tuple[int, int], skipped: dict,
                   held: list[Doc]) -> None:
        """Record progress after a shard: input position, shards, pending and held docs."""
        rdir = self.dir / RESUME_DIR
        self.checkpoints += 1
        pending = {}
        groups = {name: buf.docs for name, buf in self.splits.items()} | {HELD: held}
        for name, docs in groups.items():
            if docs:
                path = rdir / f"pending-{name}-{self.checkpoints:06d}.arrow"
                write_docs(path, docs, self.dtype)
                pending[name] = {"file": path.name, "sha256": sha256_file(path)}
        state = {"run_key": run_key, "cursor": list(cursor), "skipped": skipped,
                 "shards": {n: [s.model_dump() for s in b.shards] for n, b in self.splits.items()},
                 "pending": pending}
        write_json_atomic(rdir / STATE_NAME, state)
        keep = {p["file"] for p in pending.values()} | {STATE_NAME}
        for stale in rdir.iterdir():
            if stale.name not in keep:
                stale.unlink()

    def restore(self, state: dict) -> list[Doc]:
        """Load finished shards and pending documents from a verified checkpoint; returns the
        held val candidates."""
        rdir = self.dir / RESUME_DIR
        for name, buf in self.splits.items():
            buf.shards = [ShardEntry.model_validate(s) for s in state["shards"].get(name, [])]
            if name in state["pending"]:
                buf.docs = read_docs(rdir / state["pending"][name]["file"])
                buf.tokens = sum(len(d.tokens) for d in buf.docs)
        held = state["pending"].get(HELD)
        return read_docs(rdir / held["file"]) if held else []


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
    try:
        files = [(Path(datadir) / s["file"], s["sha256"])
                 for shards in state["shards"].values() for s in shards]
        files += [(rdir / p["file"], p["sha256"]) for p in state["pending"].values()]
    except (KeyError, TypeError, AttributeError):
        return "its state.json is not in the format this version writes"
    for path, sha in files:
        if not path.is_file() or sha256_file(path) != sha:
            return f"{path} is missing or changed"
    return None
