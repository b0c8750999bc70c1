"""One shard folder (docs/design.md §2, §8) opened by memory map: manifest checks, and the packed
token stream of each split.

The stream of a split is doc0 EOS doc1 EOS ... over all shards in manifest order. It is never
materialised: the Arrow list offsets of each record batch ("chunk") are memory-mapped, and the
document holding stream position q is found by a vectorised binary search over
`offsets[j] - offsets[0] + j` (the stream start of document j; the `+ j` counts the EOS tokens
before it). Opening costs O(number of record batches), independent of the number of documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.manifest import (
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    ManifestError,
    fingerprint,
    read_manifest,
    sha256_file,
)

DTYPES = {"uint16": (pa.uint16(), 1 << 16), "uint32": (pa.uint32(), 1 << 32)}
RANGE_CHECK_BLOCK = 4096     # tokens read per probe when checking ids < vocab_size
RANGE_CHECK_PROBES = 16      # probes per chunk: the check is O(chunks), not O(tokens)


class DataError(ValueError):
    """A shard folder that cannot be used; the message names the folder or file."""


@dataclass
class Chunk:
    """One record batch: `values[offsets[j]:offsets[j+1]]` are the tokens of document j."""

    offsets: np.ndarray  # (docs + 1,) int64, memory-mapped
    values: np.ndarray   # (tokens,) uint16/uint32, memory-mapped

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def stream_len(self) -> int:  # tokens + one EOS per document
        return int(self.offsets[-1] - self.offsets[0]) + self.num_docs


def _find_docs(offsets: np.ndarray, q: np.ndarray) -> np.ndarray:
    """For chunk-local stream positions q (n,): the largest j with stream_start(j) <= q, where
    stream_start(j) = offsets[j] - offsets[0] + j.

    A bracket lo <= j <= hi is tightened with np.searchsorted on the offsets (j <= the last
    document starting at token q - lo; j >= the last starting at token q - hi), which shrinks it
    by about the mean document length per pass; a short bisection finishes."""
    off0, last = offsets[0], len(offsets) - 2
    lo = np.zeros_like(q)
    hi = np.minimum(np.searchsorted(offsets, q + off0, "right") - 1, last)
    for _ in range(4):
        lo = np.clip(np.searchsorted(offsets, q - hi + off0, "right") - 1, lo, hi)
        hi = np.minimum(np.searchsorted(offsets, q - lo + off0, "right") - 1, hi)
        if (hi - lo).max() <= 1:
            break
    for _ in range(int((hi - lo).max()).bit_length()):
        mid = (lo + hi + 1) >> 1
        ok = offsets[mid] - off0 + mid <= q
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid - 1)
    return lo


def gather_windows(chunk: Chunk, starts: np.ndarray, length: int,
                   eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows stream[s : s + length] lying inside one chunk, for each s in `starts` (n,).
    Returns tokens (n, length) in the shard dtype and doc ids (n, length) int32, counting
    from 0 at each window's first position (an EOS belongs to the document it ends)."""
    off, off0, n = chunk.offsets, chunk.offsets[0], len(starts)
    d = _find_docs(off, np.concatenate([starts, starts + length - 1]))
    d_first, d_last = d[:n], d[n:]                                       # (n,), (n,)
    counts = d_last - d_first                 # documents starting inside each window
    rows = np.repeat(np.arange(n), counts)
    first = np.cumsum(counts) - counts
    j = np.repeat(d_first + 1 - first, counts) + np.arange(len(rows))  # documents starting
    cols = off[j] - off0 + j - starts[rows]                              # ... at these columns
    marks = np.zeros((n, length), np.int32)
    marks[rows, cols] = 1
    local = np.cumsum(marks, axis=1, dtype=np.int32)                     # (n, length) doc ids
    # EOS positions: before each document start, and after the last document if inside
    last_end = off[d_last + 1] - off0 + d_last - starts
    inside = np.flatnonzero(last_end < length)
    eos_rows = np.concatenate([rows, inside])
    eos_cols = np.concatenate([cols - 1, last_end[inside]])
    # token of stream position p in document d is values[p - d + off0]
    vidx = (starts + off0 - d_first)[:, None] + np.arange(length)        # (n, length)
    vidx -= local
    vidx[eos_rows, eos_cols] = off0           # any valid index: overwritten below
    values = chunk.values if len(chunk.values) else np.zeros(1, chunk.values.dtype)
    tokens = values[vidx]                                                # (n, length)
    tokens[eos_rows, eos_cols] = eos_id
    return tokens, local


class SplitStream:
    """The packed token stream of one split: chunks laid end to end."""

    def __init__(self, chunks: list[Chunk], eos_id: int):
        self.chunks = chunks
        self.eos_id = eos_id
        lens = [c.stream_len for c in chunks]
        self.bases = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
        self.stream_len = int(self.bases[-1])
        self.dtype = chunks[0].values.dtype

    def windows(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """stream[s : s + length] for each s in `starts` (n,): tokens, doc ids (n, length)."""
        starts = np.asarray(starts, np.int64)
        c_first = np.searchsorted(self.bases, starts, "right") - 1
        c_last = np.searchsorted(self.bases, starts + length - 1, "right") - 1
        whole = c_first == c_last
        if len(starts) and whole.all() and c_first.min() == c_first.max():
            c = int(c_first[0])                 # all in one chunk: no copy into a batch array
            return gather_windows(self.chunks[c], starts - self.bases[c], length, self.eos_id)
        tokens = np.empty((len(starts), length), self.dtype)
        docs = np.empty((len(starts), length), np.int32)
        for c in np.unique(c_first[whole]):
            sel = np.flatnonzero(whole & (c_first == c))
            tokens[sel], docs[sel] = gather_windows(
                self.chunks[c], starts[sel] - self.bases[c], length, self.eos_id)
        for i in np.flatnonzero(~whole):
            tokens[i], docs[i] = self._crossing_window(int(starts[i]), length, int(c_first[i]))
        return tokens, docs

    def _crossing_window(self, start: int, length: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """A window spanning chunks: gather it piece by piece (chunks end on a document end)."""
        tok_parts, doc_parts, pos, end, next_doc = [], [], start, start + length, 0
        while pos < end:
            piece = min(end, int(self.bases[c + 1])) - pos
            if piece == 0:      # an empty chunk
                c += 1
                continue
            t, d = gather_windows(self.chunks[c], np.array([pos - self.bases[c]]), piece,
                                  self.eos_id)
            tok_parts.append(t[0])
            doc_parts.append(d[0] + next_doc)
            next_doc = int(doc_parts[-1][-1]) + 1
            pos, c = pos + piece, c + 1
        return np.concatenate(tok_parts), np.concatenate(doc_parts)


class ShardFolder:
    """A checked, memory-mapped shard folder. Raises DataError naming the folder or file."""

    def __init__(self, folder: str | Path, tokenizer: str | Path | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such shard folder")
        try:
            self.manifest = read_manifest(self.folder)
        except ManifestError as e:
            raise DataError(str(e)) from None
        self._check_header()
        tok = self.manifest["tokenizer"]
        self.vocab_size = int(tok["vocab_size"])
        self.eos_id, self.pad_id = int(tok["eos_id"]), int(tok["pad_id"])
        self.sentinel_ids = [int(t) for t in tok.get("sentinel_ids") or []]
        self.tokenizer_path = self.folder / tok.get("file", "tokenizer.json")
        self.fingerprint = str(self.manifest["fingerprint"])
        self._check_tokenizer(tokenizer)
        self.streams = {split: self._open_split(split) for split in SPLITS}

    def _fail(self, problem: str) -> DataError:
        return DataError(f"{self.folder}: {problem}")

    def _check_header(self) -> None:
        m = self.manifest
        if m.get("format") != FORMAT:
            raise self._fail(f"manifest format is {m.get('format')!r}, expected {FORMAT!r}")
        if m.get("format_version") != FORMAT_VERSION:
            raise self._fail(f"manifest format_version is {m.get('format_version')!r}; this "
                             f"loader reads version {FORMAT_VERSION}")
        missing = [k for k in ("dtype", "tokenizer", "splits", "fingerprint") if k not in m]
        missing += [f"tokenizer.{k}" for k in ("sha256", "vocab_size", "eos_id", "pad_id")
                    if k not in (m.get("tokenizer") or {})]
        if missing:
            raise self._fail(f"manifest lacks {', '.join(missing)}")
        if m["fingerprint"] != fingerprint(m):
            raise self._fail("manifest fingerprint does not match its shard list (edited by hand?)")
        if m["dtype"] not in DTYPES:
            raise self._fail(f"manifest dtype {m['dtype']!r} is not one of {sorted(DTYPES)}")
        vocab = m["tokenizer"]["vocab_size"]
        if not isinstance(vocab, int) or not 0 < vocab <= DTYPES[m["dtype"]][1]:
            raise self._fail(f"vocab_size {vocab!r} does not fit dtype {m['dtype']}")

    def _check_tokenizer(self, run_tokenizer: str | Path | None) -> None:
        want = self.manifest["tokenizer"]["sha256"]
        if not self.tokenizer_path.is_file():
            raise self._fail(f"{self.tokenizer_path.name} is missing")
        if run_tokenizer is None:
            return
        path = Path(run_tokenizer)
        if not path.is_file():
            raise DataError(f"data.tokenizer {path}: no such file")
        got = sha256_file(path)
        if got != want:
            raise self._fail(f"tokenizer hash mismatch: the shards were written with a tokenizer "
                             f"of sha256 {want[:16]}..., the run's tokenizer {path} has "
                             f"{got[:16]}...; re-shard with this tokenizer or point "
                             "data.tokenizer at the folder's tokenizer.json")

    def _open_split(self, split: str) -> SplitStream:
        info = (self.manifest["splits"] or {}).get(split)
        if not info or not info.get("shards") or not info.get("tokens"):
            raise self._fail(f"the {split} split is empty (no documents with tokens); "
                             "re-shard with more input" + (" or a larger --val-fraction"
                                                           if split == "val" else ""))
        chunks = []
        for shard in info["shards"]:
            chunks += self._open_shard(shard)
        return SplitStream(chunks, self.eos_id)

    def _open_shard(self, shard: dict) -> list[Chunk]:
        path = self.folder / shard["file"]
        if not path.is_file():
            raise DataError(f"{path}: shard file listed in the manifest is missing")
        size = path.stat().st_size
        if size != shard["file_bytes"]:
            raise DataError(f"{path}: {size} bytes, the manifest says {shard['file_bytes']} "
                            "(truncated or rewritten; run `python -m data_tools validate`)")
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            for b in batches:
                b.validate()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: corrupt Arrow file: {e}") from None
        chunks = [self._chunk(path, reader.schema, b) for b in batches]
        docs = sum(c.num_docs for c in chunks)
        tokens = sum(int(c.offsets[-1] - c.offsets[0]) for c in chunks)
        if (docs, tokens) != (shard["documents"], shard["tokens"]):
            raise DataError(f"{path}: holds {docs} documents / {tokens} tokens, the manifest "
                            f"says {shard['documents']} / {shard['tokens']}")
        return [c for c in chunks if c.num_docs]

    def _chunk(self, path: Path, schema: pa.Schema, batch: pa.RecordBatch) -> Chunk:
        value_type = DTYPES[self.manifest["dtype"]][0]
        want = pa.schema([("tokens", pa.large_list(value_type))])
        if schema.names != ["tokens"] or schema.types != want.types:
            raise DataError(f"{path}: schema {schema} differs from the expected {want}")
        col = batch.column(0)
        if col.null_count or col.values.null_count:
            raise DataError(f"{path}: null documents or tokens")
        chunk = Chunk(col.offsets.to_numpy(zero_copy_only=True),
                      col.values.to_numpy(zero_copy_only=True))
        self._check_range(path, chunk)
        return chunk

    def _check_range(self, path: Path, chunk: Chunk) -> None:
        """ids < vocab_size on up to RANGE_CHECK_PROBES blocks spread over the chunk (the whole
        chunk when it is small); `data_tools validate` checks every token."""
        lo, hi = int(chunk.offsets[0]), int(chunk.offsets[-1])
        if hi == lo:
            return
        starts = np.unique(np.linspace(lo, max(lo, hi - RANGE_CHECK_BLOCK),
                                       RANGE_CHECK_PROBES).astype(np.int64))
        top = max(int(chunk.values[s:min(hi, s + RANGE_CHECK_BLOCK)].max()) for s in starts)
        if top >= self.vocab_size:
            raise DataError(f"{path}: token id {top} >= vocab_size {self.vocab_size} "
                            "(shards and manifest disagree; run `python -m data_tools validate`)")

    def text_bytes(self, split: str) -> int:
        return int(self.manifest["splits"][split].get("text_bytes", 0))
