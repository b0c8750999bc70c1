"""Synthetic shard folders written to the format of docs/design.md §2/§8 without a tokenizer run:
for the loader's tests and benchmarks (the real writer is `python -m data_tools shard`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.manifest import (
    ARROWTRAIN_VERSION,
    FORMAT,
    FORMAT_VERSION,
    dtype_for_vocab,
    sha256_file,
    write_manifest,
)

Docs = tuple[np.ndarray, np.ndarray]   # (offsets (docs+1,) int64 from 0, values (tokens,))


def docs_from_lists(docs: list[np.ndarray] | list[list[int]]) -> Docs:
    lengths = np.array([len(d) for d in docs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate([np.asarray(d, np.int64) for d in docs]) if len(docs) else \
        np.zeros(0, np.int64)
    return offsets, values


def random_docs(rng: np.random.Generator, num_tokens: int, mean_doc_len: int,
                low: int, high: int, dtype: type = np.int64) -> Docs:
    """Documents of geometric lengths (>= 1) totalling about num_tokens, ids in [low, high)."""
    n_docs = max(1, num_tokens // mean_doc_len)
    lengths = rng.geometric(1.0 / mean_doc_len, n_docs).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(low, high, int(offsets[-1]), dtype=dtype)
    return offsets, values


def write_shard(path: Path, docs: Docs, dtype: str, batch_docs: int | None = None) -> dict:
    """One Arrow IPC file, column tokens: large_list<dtype>, record batches of batch_docs."""
    offsets, values = docs
    value_type = pa.uint16() if dtype == "uint16" else pa.uint32()
    arr = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()),
                                        pa.array(values.astype(dtype, copy=False), value_type))
    schema = pa.schema([("tokens", pa.large_list(value_type))])
    step = batch_docs or max(1, len(arr))
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for start in range(0, max(1, len(arr)), step):
            writer.write_batch(pa.record_batch([arr.slice(start, step)], schema=schema))
    n_tokens = int(offsets[-1] - offsets[0])
    return {"file": "", "documents": len(arr), "tokens": n_tokens, "text_bytes": 4 * n_tokens,
            "file_bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_folder(folder: str | Path, splits: dict[str, Iterable[Docs]], vocab_size: int, *,
                 eos_id: int = 0, pad_id: int = 1, sentinel_ids: list[int] | None = None,
                 batch_docs: int | None = None, tokenizer_text: str = '{"synthetic": true}',
                 ) -> dict:
    """Write `splits` ({"train": [shard docs, ...], "val": [...]}; shards may come from a
    generator, one at a time) as a shard folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer_text)
    dtype = dtype_for_vocab(vocab_size)
    manifest_splits = {}
    for split, shards in splits.items():
        infos = []
        for i, docs in enumerate(shards):
            name = f"{split}/{i:05d}.arrow"
            infos.append({**write_shard(folder / name, docs, dtype, batch_docs), "file": name})
        manifest_splits[split] = {k: sum(s[k] for s in infos)
                                  for k in ("documents", "tokens", "text_bytes")}
        manifest_splits[split]["shards"] = infos
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arrowtrain_version": ARROWTRAIN_VERSION,
        "dtype": dtype,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(folder / "tokenizer.json"),
                      "vocab_size": vocab_size, "eos_id": eos_id, "pad_id": pad_id,
                      "bos_id": None, "sentinel_ids": list(sentinel_ids or [])},
        "splits": manifest_splits, "inputs": [], "skipped": {}, "args": {"synthetic": True},
        "timing": {},
    }
    write_manifest(folder, manifest)
    return manifest
