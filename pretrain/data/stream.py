"""The packed token stream of a split, read from memory-mapped Arrow files without copying.

The stream is doc0 EOS doc1 EOS ... over all shard files in manifest order; it is never
materialised. Each file is viewed whole, as int64 words (for the list offsets) and as tokens;
a record batch ("chunk") is then just where its offsets and values start in those views. So a
batch of windows over one file is gathered with a handful of numpy calls, however many record
batches the file has:

- stream_start(doc) = chunk stream base + (offsets[j] - offsets[0]) + j (j EOS before it);
- the document holding position q: the chunk by np.searchsorted, then a branchless binary
  search over that chunk's offsets, vectorised over all windows;
- token at position q of document d: tokens[q + delta(d)] with delta(d) = first token index of
  d - stream_start(d), so a window's token indices are a running sum of deltas (np.cumsum),
  with EOS written where a document ends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

RANGE_CHECK_BLOCK = 4096     # tokens read per probe when checking ids < vocab_size
RANGE_CHECK_PROBES = 16      # chunks probed per file: the check is O(files), not O(tokens)


class DataError(ValueError):
    """Shards that cannot be used; the message names the folder or file."""


class ShardFile:
    """One Arrow IPC file, column tokens: large_list<uint16|uint32>, memory-mapped."""

    def __init__(self, path: Path, value_type: pa.DataType):
        self.path = path
        try:
            mm = pa.memory_map(str(path), "r")
            whole = mm.read_buffer()                  # zero-copy view of the file's bytes
            table = pa.ipc.open_file(mm).read_all()   # zero-copy record batches of the same map
            table.validate()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: corrupt Arrow file: {e}") from None
        want = pa.schema([("tokens", pa.large_list(value_type))])
        if table.schema.names != ["tokens"] or table.schema.types != want.types:
            raise DataError(f"{path}: schema {table.schema} differs from the expected {want}")
        if table.column(0).null_count:
            raise DataError(f"{path}: null documents")
        self.words = np.frombuffer(whole, np.int64, count=whole.size // 8)
        self.tokens = np.frombuffer(whole, value_type.to_pandas_dtype(),
                                    count=whole.size // value_type.byte_width)
        self._index_chunks(whole.address, table.column(0).chunks, value_type.byte_width)

    def _index_chunks(self, base: int, chunks: list[pa.Array], width: int) -> None:
        """Where each non-empty chunk's offsets / values start in the whole-file views."""
        meta = []
        for c in chunks:
            _, offsets, value_validity, values = c.buffers()
            if value_validity is not None and c.values.null_count:
                raise DataError(f"{self.path}: null tokens")
            if len(c):
                meta.append((offsets.address - base, values.address - base, len(c), c.offset,
                             values.size // width))
        if not meta:
            raise DataError(f"{self.path}: no documents")
        o_byte, v_byte, ndocs, first, nvals = (np.array(m, np.int64) for m in zip(*meta))
        if (o_byte % 8).any() or (v_byte % width).any():
            raise DataError(f"{self.path}: Arrow buffers are not aligned")
        self.obase = o_byte // 8 + first                    # words[obase + j] = offsets[j]
        self.vbase = v_byte // width                        # tokens[vbase + o] = values[o]
        self.ndocs = ndocs
        self.off0 = self.words[self.obase]
        ntok = self.words[self.obase + ndocs] - self.off0
        if (ntok < 0).any() or (self.words[self.obase + ndocs] > nvals).any():
            raise DataError(f"{self.path}: list offsets point outside the values")
        self.doc_base = np.concatenate([[0], np.cumsum(ndocs)])           # (chunks + 1,)
        self.sbase = np.concatenate([[0], np.cumsum(ntok + ndocs)])       # stream bases
        self.num_docs, self.num_tokens = int(self.doc_base[-1]), int(ntok.sum())
        self.stream_len = int(self.sbase[-1])
        self._search_steps = int(ndocs.max() - 1).bit_length()

    def max_token_sample(self) -> int:
        """Largest id in up to RANGE_CHECK_PROBES chunks (first and last tokens of each)."""
        top = 0
        for c in np.unique(np.linspace(0, len(self.ndocs) - 1, RANGE_CHECK_PROBES).astype(int)):
            lo = int(self.vbase[c] + self.off0[c])
            hi = lo + int(self.sbase[c + 1] - self.sbase[c] - self.ndocs[c])
            for a, b in ((lo, min(hi, lo + RANGE_CHECK_BLOCK)), (max(lo, hi - RANGE_CHECK_BLOCK), hi)):
                if b > a:
                    top = max(top, int(self.tokens[a:b].max()))
        return top

    def _doc_start(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For file-level document numbers g: (stream start, index of first token in tokens)."""
        c = np.searchsorted(self.doc_base, g, "right") - 1
        j = g - self.doc_base[c]
        o = self.words[self.obase[c] + j]
        return self.sbase[c] + (o - self.off0[c]) + j, self.vbase[c] + o

    def _find_docs(self, q: np.ndarray) -> np.ndarray:
        """File-level number of the document holding stream position q (n,)."""
        c = np.searchsorted(self.sbase, q, "right") - 1
        ob, last = self.obase[c], self.ndocs[c] - 1
        target = q - self.sbase[c] + self.off0[c]   # offsets[j] + j <= target
        lo = np.zeros_like(q)
        for k in reversed(range(self._search_steps)):
            cand = np.minimum(lo + (1 << k), last)
            lo = np.where(self.words[ob + cand] + cand <= target, cand, lo)
        return self.doc_base[c] + lo

    def windows(self, starts: np.ndarray, length: int,
                eos_id: int) -> tuple[np.ndarray, np.ndarray]:
        """stream[s : s + length] for each s in `starts` (n,), all inside this file: tokens
        (n, length) in the shard dtype, doc ids (n, length) int32 from 0 in each window (an EOS
        belongs to the document it ends)."""
        n = len(starts)
        g = self._find_docs(np.concatenate([starts, starts + length - 1]))
        g_first, g_last = g[:n], g[n:]                                    # (n,), (n,)
        counts = g_last - g_first                       # documents starting inside a window
        rows = np.repeat(np.arange(n), counts)
        row_first = np.cumsum(counts) - counts
        g_in = np.repeat(g_first + 1 - row_first, counts) + np.arange(len(rows))
        s_in, v_in = self._doc_start(g_in)
        cols = s_in - starts[rows]                                        # >= 1
        s0, v0 = self._doc_start(g_first)
        delta_in, delta0 = v_in - s_in, v0 - s0
        prev = np.concatenate([[0], delta_in[:-1]])     # delta of the document before
        has_docs = counts > 0
        prev[row_first[has_docs]] = delta0[has_docs]
        inc = np.zeros((n, length), np.int64)
        inc[:, 0] = delta0 + starts
        inc[rows, cols] = delta_in - prev
        index = np.cumsum(inc, axis=1)                  # token index of each position - col
        index += np.arange(length)
        marks = np.zeros((n, length), np.int32)
        marks[rows, cols] = 1
        doc_ids = np.cumsum(marks, axis=1, dtype=np.int32)                # (n, length)
        # EOS before every document start, and after the last document if inside the window
        nxt = np.minimum(g_last + 1, self.num_docs - 1)
        s_next = np.where(g_last + 1 < self.num_docs, self._doc_start(nxt)[0], self.stream_len)
        end = s_next - 1 - starts
        inside = np.flatnonzero(end < length)
        eos_rows = np.concatenate([rows, inside])
        eos_cols = np.concatenate([cols - 1, end[inside]])
        index[eos_rows, eos_cols] = 0                   # any valid index; overwritten below
        tokens = self.tokens[index]                                       # (n, length)
        tokens[eos_rows, eos_cols] = eos_id
        return tokens, doc_ids


class SplitStream:
    """The packed stream of one split: shard files laid end to end."""

    def __init__(self, files: list[ShardFile], eos_id: int):
        self.files, self.eos_id = files, eos_id
        self.bases = np.concatenate([[0], np.cumsum([f.stream_len for f in files])])
        self.stream_len = int(self.bases[-1])
        self.dtype = files[0].tokens.dtype

    def windows(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """stream[s : s + length] for each s in `starts` (n,): tokens, doc ids (n, length)."""
        starts = np.asarray(starts, np.int64)
        f_first = np.searchsorted(self.bases, starts, "right") - 1
        f_last = np.searchsorted(self.bases, starts + length - 1, "right") - 1
        whole = f_first == f_last
        if len(starts) and whole.all() and f_first.min() == f_first.max():
            f = int(f_first[0])                 # all in one file: no copy into a batch array
            return self.files[f].windows(starts - self.bases[f], length, self.eos_id)
        tokens = np.empty((len(starts), length), self.dtype)
        docs = np.empty((len(starts), length), np.int32)
        for f in np.unique(f_first[whole]):
            sel = np.flatnonzero(whole & (f_first == f))
            tokens[sel], docs[sel] = self.files[f].windows(starts[sel] - self.bases[f], length,
                                                           self.eos_id)
        for i in np.flatnonzero(~whole):
            tokens[i], docs[i] = self._crossing_window(int(starts[i]), length, int(f_first[i]))
        return tokens, docs

    def _crossing_window(self, start: int, length: int, f: int) -> tuple[np.ndarray, np.ndarray]:
        """A window spanning files, piece by piece (a file ends with a document's EOS)."""
        tok_parts, doc_parts, pos, end, next_doc = [], [], start, start + length, 0
        while pos < end:
            piece = min(end, int(self.bases[f + 1])) - pos
            t, d = self.files[f].windows(np.array([pos - self.bases[f]]), piece, self.eos_id)
            tok_parts.append(t[0])
            doc_parts.append(d[0] + next_doc)
            next_doc = int(doc_parts[-1][-1]) + 1
            pos, f = pos + piece, f + 1
        return np.concatenate(tok_parts), np.concatenate(doc_parts)
