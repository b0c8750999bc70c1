"""The packed token stream of a split, read from memory-mapped Arrow files without copying.

The stream is doc0 EOS doc1 EOS ... over all shard files in manifest order; it is never
materialised. All files of the split are mapped into one address range (pretrain.data.vmap)
and viewed as one int64 array (for the list offsets) and one token array (shards in object
storage: each file has its slot in that range and is mapped there only while the node's cache
holds it; the files a batch touches are mapped before it is gathered); a record batch
("chunk") is then just where its offsets and values start in those views. So a batch of
windows is gathered with a few dozen numpy calls, however many files and record batches:

- stream_start(doc) = chunk stream base + (offsets[j] - offsets[0]) + j (j EOS before it);
- the document holding position q: the chunk by np.searchsorted over chunk stream bases, then
  a branchless binary search over that chunk's offsets, vectorised over all windows;
- token at position q of document d: tokens[q + delta(d)], delta(d) = (index of d's first
  token) - stream_start(d); a window's token indices are a running sum of deltas (np.cumsum),
  with EOS written where a document ends.

Every gathered batch is checked before it is used (O(windows + documents touched) plus one
`max` over the tokens): the list offsets read for it lie within their record batch and give
strictly increasing document starts that tile each window, and every id is < vocab_size. A
shard damaged after the start-up checks (which probe only a sample of each file) stops the run
with a DataError naming the file and the document, never an IndexError or silent garbage.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.data.vmap import MappedFiles

RANGE_CHECK_BLOCK = 4096     # tokens read per probe when checking ids < vocab_size
RANGE_CHECK_PROBES = 16      # chunks probed per file: the check is O(files), not O(tokens)


class DataError(ValueError):
    """Shards that cannot be used; the message names the folder or file."""


def _chunk_table(path: Path, buf: pa.Buffer, base: int, value_type: pa.DataType) -> np.ndarray:
    """(chunks, 5) int64: byte address of offsets, of values, docs, first offset slot, values,
    for the non-empty record batches of one Arrow file (addresses relative to `base`)."""
    return column_chunks(path, buf, base, value_type, ("tokens",))[0]


def column_chunks(path: Path, buf: pa.Buffer, base: int, value_type: pa.DataType,
                  columns: tuple[str, ...]) -> list[np.ndarray]:
    """_chunk_table for each of `columns` (the file must hold exactly these list columns)."""
    try:
        table = pa.ipc.open_file(pa.BufferReader(buf)).read_all()
        table.validate()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: corrupt Arrow file: {e}") from None
    want = pa.schema([(c, pa.large_list(value_type)) for c in columns])
    if table.schema.names != list(columns) or table.schema.types != want.types:
        raise DataError(f"{path}: schema {table.schema} differs from the expected {want}")
    out = []
    for name in columns:
        if table.column(name).null_count:
            raise DataError(f"{path}: null rows in column {name!r}")
        rows = []
        for c in table.column(name).chunks:
            _, offsets, value_validity, values = c.buffers()
            if value_validity is not None and c.values.null_count:
                raise DataError(f"{path}: null tokens")
            if len(c):
                rows.append((offsets.address - base, values.address - base, len(c), c.offset,
                             values.size // value_type.byte_width))
        out.append(np.array(rows, np.int64).reshape(-1, 5))
    return out


def expand_ranges(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Sorted unique ids in the inclusive ranges [first[i], last[i]]."""
    span = last - first + 1
    ids = np.repeat(first, span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
    return np.unique(ids)


def group_ranges(first: np.ndarray, last: np.ndarray, budget: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows (windows) grouped so that each group touches at most `budget` files (a window's
    files are [first, last]; `budget` >= the most one window touches): [(rows, file ids)]."""
    groups, rows, ids = [], [], set()
    for r in np.argsort(first, kind="stable").tolist():
        mine = set(range(int(first[r]), int(last[r]) + 1))
        if rows and len(ids | mine) > budget:
            groups.append((np.array(rows), np.array(sorted(ids))))
            rows, ids = [], set()
        rows.append(r)
        ids |= mine
    groups.append((np.array(rows), np.array(sorted(ids))))
    return groups


class SplitStream:
    """The packed stream of one split over its shard files (in order).

    `shards` (pretrain.data.shardset) gives the files: a local folder's are all mapped at once;
    object-storage shards are mapped lazily, only the files a batch of windows touches, through
    the node's cache (every file's slot, documents and tokens are known from the manifest, so
    stream positions and the sample order never depend on what is cached)."""

    def __init__(self, shards, value_type: pa.DataType, eos_id: int, vocab_size: int,
                 counts: list[tuple[int, int]] | None = None):
        self.eos_id, self.vocab_size, self.value_type = eos_id, vocab_size, value_type
        self.shards = shards
        self.paths = list(shards.names)                    # for messages
        self.counts = counts                               # manifest (documents, tokens)
        self.files = MappedFiles(sizes=shards.sizes)
        self.words = self.files.view(np.int64)
        self.tokens = self.files.view(value_type.to_pandas_dtype())
        self.dtype = self.tokens.dtype
        self.lazy = shards.lazy
        self._all_mapped = False      # lazy: every file mapped (nothing to check per gather)
        self._tables: list[np.ndarray] = [self._placeholder(i) for i in range(len(self.paths))]
        self._rebuild()
        shards.bind(self._drop)
        if not self.lazy:
            for i, path in enumerate(shards.acquire(list(range(len(self.paths))))):
                self._map(i, path)
            self._rebuild()
        else:
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (s := ref()) and s._forget())

    def _forget(self) -> None:
        """In a forked child (a DataLoader worker): the parent's mappings are the parent's
        pins; unmap them, the child maps (and pins) what it reads itself."""
        for i in np.flatnonzero(self.files.mapped):
            self._unmap(int(i))
        self._all_mapped = False
        self._rebuild()

    # ---- the chunk table: one row per record batch, placeholders for unmapped files -------
    def _placeholder(self, i: int) -> np.ndarray:
        """(1, 6) row of an unmapped file from the manifest: obase, vbase -1 (never read)."""
        docs, tokens = self.counts[i] if self.counts is not None else (0, 0)
        return np.array([[-1, -1, docs, 0, tokens, tokens]], np.int64)

    def _map(self, i: int, path: Path) -> None:
        """Map file i and read its record batches into its chunk table rows
        (obase, vbase, docs, off0, tokens, values); checked against the manifest."""
        self.files.map(i, path)
        width = self.value_type.byte_width
        raw = _chunk_table(self.paths[i], self.files.buffer(i), self.files.address,
                           self.value_type)
        o_byte, v_byte, ndocs, first, nvals = raw.T
        if (o_byte % 8).any() or (v_byte % width).any():
            raise DataError(f"{self.paths[i]}: Arrow buffers are not aligned")
        obase = o_byte // 8 + first
        off0 = self.words[obase]
        ntok = self.words[obase + ndocs] - off0
        if ((ntok < 0) | (self.words[obase + ndocs] > nvals)).any():
            raise DataError(f"{self.paths[i]}: list offsets point outside the values")
        self._tables[i] = np.stack([obase, v_byte // width, ndocs, off0, ntok, nvals], axis=1)
        self._check_counts(i)

    def _check_counts(self, i: int) -> None:
        if self.counts is None:
            return
        docs, tokens = (int(x) for x in self._tables[i][:, [2, 4]].sum(axis=0))
        want = self.counts[i]
        if (docs, tokens) != tuple(want):
            raise DataError(f"{self.paths[i]}: holds {docs} documents / {tokens} tokens, the "
                            f"manifest says {want[0]} / {want[1]}")
        top = self._max_token_sample(self._tables[i])
        if top >= self.vocab_size:
            raise DataError(f"{self.paths[i]}: token id {top} >= vocab_size {self.vocab_size} "
                            "(shards and manifest disagree; run `python -m data_tools "
                            "validate`)")

    def _rebuild(self) -> None:
        """The split-wide arrays over all chunks, from the per-file tables."""
        table = np.concatenate(self._tables)
        self.file_chunks = np.cumsum([0] + [len(t) for t in self._tables])   # chunks per file
        self.obase, self.vbase, self.ndocs, self.off0, self.ntok, _ = (
            np.ascontiguousarray(c) for c in table.T)
        self.ntok_u64 = self.ntok.astype(np.uint64)     # for the per-batch offset checks
        self.doc_base = np.concatenate([[0], np.cumsum(self.ndocs)])           # (chunks + 1,)
        self.sbase = np.concatenate([[0], np.cumsum(self.ntok + self.ndocs)])  # stream bases
        self.file_sbase = self.sbase[self.file_chunks]                         # (files + 1,)
        self.num_docs, self.stream_len = int(self.doc_base[-1]), int(self.sbase[-1])
        readable = np.flatnonzero((self.obase >= 0) & (self.ntok > 0))   # mapped, not empty
        self._safe_index = int(self.vbase[readable[0]] + self.off0[readable[0]]) \
            if len(readable) else 0
        self._search_steps = int(max(1, self.ndocs.max(initial=1)) - 1).bit_length()
        self._dirty = False

    def _unmap(self, i: int) -> None:
        self.files.unmap(i)
        self._tables[i] = self._placeholder(i)

    # ---- which files windows touch; making them present -------------------------------------
    def file_ranges(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) file of each window [s, s + length) (n,), (n,)."""
        starts = np.asarray(starts, np.int64)
        return (np.searchsorted(self.file_sbase, starts, "right") - 1,
                np.searchsorted(self.file_sbase, starts + length - 1, "right") - 1)

    def files_of(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Sorted ids of the files holding stream positions [s, s + length) for s in starts."""
        return expand_ranges(*self.file_ranges(starts, length))

    def _hold(self, ids: np.ndarray) -> None:
        """Map files `ids` (all of them), first letting go of this process's least recently
        used mapped shards if the process's share of the node cache asks for it."""
        if self.files.mapped[ids].all():
            self.shards.touch(ids)
            if self._dirty:
                self._rebuild()
            return
        missing = [int(i) for i in ids if not self.files.mapped[i]]
        self.shards.make_room(ids, None)
        try:
            paths = self.shards.acquire(missing)
            for i, path in zip(missing, paths):
                self._map(i, path)
            self.shards.mapped(ids)
        finally:
            self._rebuild()
            self._all_mapped = bool(self.files.mapped.all())

    def _drop(self, i: int) -> None:
        """The cache's callback: unmap file i (arrays rebuilt before the next gather)."""
        self._unmap(i)
        self._dirty = True
        self._all_mapped = False

    def file_counts(self, i: int) -> tuple[int, int]:
        """(documents, tokens) of file i."""
        a, b = self.file_chunks[i], self.file_chunks[i + 1]
        return int(self.ndocs[a:b].sum()), int(self.ntok[a:b].sum())

    def _max_token_sample(self, table: np.ndarray) -> int:
        """Largest id in up to RANGE_CHECK_PROBES chunks of one file's table (first and last
        tokens of each)."""
        top = 0
        for c in np.unique(np.linspace(0, len(table) - 1, RANGE_CHECK_PROBES).astype(int)):
            lo = int(table[c, 1] + table[c, 3])
            hi = lo + int(table[c, 4])
            for x, y in ((lo, min(hi, lo + RANGE_CHECK_BLOCK)),
                         (max(lo, hi - RANGE_CHECK_BLOCK), hi)):
                if y > x:
                    top = max(top, int(self.tokens[x:y].max()))
        return top

    def _doc_start(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For document numbers g: (stream start, index of the first token in self.tokens).
        DataError when an offset read lies outside its record batch's values."""
        c = np.searchsorted(self.doc_base, g, "right") - 1
        j = g - self.doc_base[c]
        o = self.words[self.obase[c] + j]
        rel = o - self.off0[c]                  # must be in [0, ntok[c]]
        self._check_offsets(g, rel, c)
        return self.sbase[c] + rel + j, self.vbase[c] + o

    def _doc_end(self, g: np.ndarray) -> np.ndarray:
        """Stream position just after document g's EOS (= where the next one starts), read
        from g's own chunk (the next document may be in a file that is not mapped)."""
        c = np.searchsorted(self.doc_base, g, "right") - 1
        j = g - self.doc_base[c]
        rel = self.words[self.obase[c] + j + 1] - self.off0[c]      # must be in [0, ntok[c]]
        self._check_offsets(g, rel, c)
        return self.sbase[c] + rel + j + 1

    def _check_offsets(self, g: np.ndarray, rel: np.ndarray, c: np.ndarray) -> None:
        """Offsets of documents g, relative to their chunk c's first, within the chunk."""
        bad = rel.view(np.uint64) > self.ntok_u64[c]        # a negative one wraps: also bad
        if bad.any():
            k = int(np.argmax(bad))
            raise self._corrupt(int(g[k]), f"list offset {int(rel[k] + self.off0[c[k]])} is "
                                "outside its record batch")

    def locate(self, g: int) -> tuple[Path, int]:
        """(shard file, row in that file) of document number g of the split."""
        c = int(np.searchsorted(self.doc_base, g, "right") - 1)
        f = int(np.searchsorted(self.file_chunks, c, "right") - 1)
        return self.paths[f], g - int(self.doc_base[self.file_chunks[f]])

    def _corrupt(self, g: int, what: str) -> DataError:
        path, row = self.locate(g)
        return DataError(f"{path}: document {row} (row {row} of the file): {what} -- the shard "
                         "is damaged (changed after it was written?); run `python -m data_tools "
                         f"validate {self.shards.folder}`")

    def _check_tiling(self, length: int, g_first: np.ndarray, rows: np.ndarray,
                      cols: np.ndarray, first: np.ndarray, after: np.ndarray) -> None:
        """Each window's documents start in strictly increasing order: the first at or before
        the window (first <= 0), the ones inside it within it (1 <= cols < length), the next
        one after it (after >= length); positions relative to the window start. O(n + docs)."""
        key = rows * length + cols                          # strictly increasing iff in order
        if ((cols - 1).view(np.uint64) < length - 1).all() and (first <= 0).all() and \
                (after >= length).all() and (len(key) < 2 or np.diff(key).min() > 0):
            return
        bad_rows = np.flatnonzero((first > 0) | (after < length))
        row = int(bad_rows[0]) if len(bad_rows) else int(rows[0])
        if not len(bad_rows):
            bad = ((cols - 1).view(np.uint64) >= length - 1) | \
                np.concatenate([[False], np.diff(key) <= 0])
            row = int(rows[np.argmax(bad)])
        raise self._corrupt(int(g_first[row]), "its list offsets are out of order (documents "
                            "overlap)")

    def _check_ids(self, tokens: np.ndarray, g_first: np.ndarray, doc_ids: np.ndarray) -> None:
        if tokens.size == 0 or int(tokens.max()) < self.vocab_size:
            return
        row, col = np.unravel_index(int(np.argmax(tokens >= self.vocab_size)), tokens.shape)
        g = int(g_first[row]) + int(doc_ids[row, col])
        raise self._corrupt(g, f"token id {int(tokens[row, col])} >= vocab_size "
                               f"{self.vocab_size}")

    def _find_docs(self, q: np.ndarray) -> np.ndarray:
        """Number of the document holding stream position q (n,)."""
        c = np.searchsorted(self.sbase, q, "right") - 1
        ob, last = self.obase[c], self.ndocs[c] - 1
        target = q - self.sbase[c] + self.off0[c]   # offsets[j] + j <= target
        lo = np.zeros_like(q)
        for k in reversed(range(self._search_steps)):
            cand = np.minimum(lo + (1 << k), last)
            lo = np.where(self.words[ob + cand] + cand <= target, cand, lo)
        return self.doc_base[c] + lo

    def _layout(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
        """The documents each window touches, checked: (g_first (n,), counts (n,) documents
        starting inside each window, rows, cols (k,) window and column of each such start,
        v_in (k,) index of its first token, d0 (n,) token index minus stream position for each
        window's first document, after (n,) where the next document starts, from the window)."""
        n = len(starts)
        g = self._find_docs(np.concatenate([starts, starts + length - 1]))
        g_first, g_last = g[:n], g[n:]                                    # (n,), (n,)
        counts = g_last - g_first                       # documents starting inside a window
        if counts.min() < 0:
            raise self._corrupt(int(g_first[np.argmin(counts)]),
                                "its list offsets are out of order (documents overlap)")
        rows = np.repeat(np.arange(n), counts)
        row_first = np.cumsum(counts) - counts
        g_in = np.repeat(g_first + 1 - row_first, counts) + np.arange(len(rows))
        k = len(rows)                               # one lookup for both kinds of document
        s, v = self._doc_start(np.concatenate([g_in, g_first]))
        cols = s[:k] - starts[rows]                                       # >= 1
        after = self._doc_end(g_last) - starts
        self._check_tiling(length, g_first, rows, cols, s[k:k + n] - starts, after)
        return g_first, counts, rows, cols, v[:k], v[k:k + n] - s[k:k + n], after

    def windows(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """stream[s : s + length] for each s in `starts` (n,): tokens (n, length) in the shard
        dtype, doc ids (n, length) int32 from 0 in each window (an EOS belongs to the document
        it ends). Lazy shards: the files the windows touch are mapped first, in groups that
        fit this process's share of the node cache (rows gathered group by group)."""
        starts = np.asarray(starts, np.int64)
        if not self.lazy or not len(starts) or (self._all_mapped and self.shards.all_fit):
            return self._gather(starts, length)         # warm: as fast as a local folder
        first, last = self.file_ranges(starts, length)
        ids = expand_ranges(first, last)
        if len(ids) <= self.shards.budget:
            self._hold(ids)
            return self._gather(starts, length)
        tokens = np.empty((len(starts), length), self.dtype)
        docs = np.empty((len(starts), length), np.int32)
        for rows, ids in group_ranges(first, last, self.shards.budget):
            self._hold(ids)
            tokens[rows], docs[rows] = self._gather(starts[rows], length)
        return tokens, docs

    def _gather(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """windows() over mapped files."""
        n = len(starts)
        g_first, counts, rows, cols, v_in, delta0, after = self._layout(starts, length)
        delta_in = v_in - (starts[rows] + cols)         # token index - stream position
        row_first = np.cumsum(counts) - counts
        prev = np.concatenate([[0], delta_in[:-1]])     # delta of the document before
        has_docs = counts > 0
        prev[row_first[has_docs]] = delta0[has_docs]
        index = np.zeros((n, length), np.int64)
        index[:, 0] = delta0 + starts
        index[rows, cols] = delta_in - prev
        np.cumsum(index, axis=1, out=index)
        index += np.arange(length)                      # token index of every position
        marks = np.zeros((n, length), np.int32)
        marks[rows, cols] = 1
        doc_ids = np.cumsum(marks, axis=1, dtype=np.int32)                # (n, length)
        # EOS before every document start, and after the last document if inside the window
        end = after - 1
        inside = np.flatnonzero(end < length)
        eos_rows = np.concatenate([rows, inside])
        eos_cols = np.concatenate([cols - 1, end[inside]])
        index[eos_rows, eos_cols] = self._safe_index    # a mapped token; overwritten below
        tokens = self.tokens[index]                                       # (n, length)
        tokens[eos_rows, eos_cols] = self.eos_id
        self._check_ids(tokens, g_first, doc_ids)
        return tokens, doc_ids
