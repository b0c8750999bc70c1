"""The pairs of one split of a pair folder (data_tools shard --source-field/--target-field or
--source-file/--target-file), read from memory-mapped Arrow files without copying.

A pair shard has two list columns, `source` and `target`, one pair per row, no EOS stored. All
files of a split are mapped into one address range (pretrain.data.vmap), as for documents; pair
g of the split is row j of record batch ("chunk") c, and its side is
`tokens[vbase[c] + offsets[j] : vbase[c] + offsets[j + 1]]`.

At open every list offset is read once (O(pairs), a few ms per million pairs): the lengths of
both sides are what the loader buckets by and filters on (pairs longer than the configured
lengths are skipped), and reading them checks every offset. Every gathered batch is checked
again (offsets within their record batch and in order, ids < vocab_size), so a shard damaged
after the start stops the run with a DataError naming the file and the row.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.data.stream import RANGE_CHECK_BLOCK, RANGE_CHECK_PROBES, DataError, column_chunks
from pretrain.data.vmap import MappedFiles

PAIR_COLUMNS = ("source", "target")


@dataclass
class _Column:
    """Where one column's record batches lie in the mapped range (arrays over chunks)."""

    obase: np.ndarray  # words[obase[c] + j] = offsets[j] of chunk c
    vbase: np.ndarray  # tokens[vbase[c] + o] = values[o]
    off0: np.ndarray  # first offset of each chunk
    ntok: np.ndarray  # tokens of each chunk
    nvals: np.ndarray  # values in each chunk's buffer (offsets must stay below)


class PairSplit:
    """The pairs of one split over its shard files (in order).

    `shards` (pretrain.data.shardset) gives the files. Every file is read once at open (the
    lengths of both sides of every pair); object-storage shards are then unmapped again and
    mapped back, through the node's cache, when a batch needs their pairs (a file's layout in
    its slot does not change, so the tables made at open stay valid)."""

    def __init__(self, shards, value_type: pa.DataType, vocab_size: int):
        self.shards, self.vocab_size, self.value_type = shards, vocab_size, value_type
        self.paths = list(shards.names)
        self.files = MappedFiles(sizes=shards.sizes)
        self.words = self.files.view(np.int64)
        self.tokens = self.files.view(value_type.to_pandas_dtype())
        self.lazy = shards.lazy
        shards.bind(self.files.unmap)
        per_file = [self._read_file(i) for i in range(len(self.paths))]
        self.file_chunks = np.cumsum([0] + [len(f[0][0]) for f in per_file])   # chunks per file
        self.columns = [_Column(*(np.concatenate([f[k][j] for f in per_file]) if per_file
                                  else np.zeros(0, np.int64) for j in range(5)))
                        for k in range(len(PAIR_COLUMNS))]
        self.ndocs = np.concatenate([f[2] for f in per_file]) if per_file else \
            np.zeros(0, np.int64)
        self.doc_base = np.concatenate([[0], np.cumsum(self.ndocs)])      # (chunks + 1,)
        self.num_pairs = int(self.doc_base[-1])
        self.source_len, self.target_len = (
            np.concatenate([f[3][k] for f in per_file]) if per_file else np.zeros(0, np.int64)
            for k in range(2))                                                # (pairs,) each
        self.file_stats = [(len(f[3][0]), int(f[3][0].sum()), int(f[3][1].sum()))
                           for f in per_file]
        self.max_ids = [f[4] for f in per_file]
        if self.lazy:
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (s := ref()) and s._forget())

    def _forget(self) -> None:
        """In a forked child: unmap the parent's (pinned by the parent) files."""
        for i in np.flatnonzero(self.files.mapped):
            self.files.unmap(int(i))

    def _read_file(self, i: int) -> tuple:
        """File i, read once: per column (obase, vbase, off0, ntok, nvals) of its chunks, its
        rows per chunk, both sides' lengths (every offset checked) and its largest sampled id.
        Lazy shards are let go of again right after (the tables stay valid for its slot)."""
        self._hold(np.array([i]))
        width = self.value_type.byte_width
        raw = column_chunks(self.paths[i], self.files.buffer(i), self.files.address,
                            self.value_type, PAIR_COLUMNS)
        cols, lengths = [], []
        for k, table in enumerate(raw):
            o_byte, v_byte, ndocs, first, nvals = table.T
            if (o_byte % 8).any() or (v_byte % width).any():
                raise DataError(f"{self.paths[i]}: Arrow buffers are not aligned")
            if k and (ndocs != raw[0][:, 2]).any():
                raise DataError(f"{self.paths[i]}: source and target columns differ in rows")
            obase = o_byte // 8 + first
            off0 = self.words[obase]
            col = (obase, v_byte // width, off0, self.words[obase + ndocs] - off0, nvals)
            cols.append(col)
            lengths.append(self._lengths(i, k, _Column(*col), ndocs))
        top = self._max_token_sample(cols, raw[0][:, 2])
        if self.lazy and len(self.paths) > 1:
            self.files.unmap(i)
            self.shards.release([i])
        return cols[0], cols[1], raw[0][:, 2], lengths, top

    def _hold(self, ids: np.ndarray) -> None:
        """Map files `ids` (lazy shards: through the cache, within this process's share; the
        tables made at open stay valid, a file's layout in its slot does not change)."""
        missing = [int(i) for i in ids if not self.files.mapped[i]]
        if not missing:
            self.shards.touch(ids)
            return
        self.shards.make_room(ids, None)
        for i, path in zip(missing, self.shards.acquire(missing)):
            self.files.map(i, path)
        self.shards.mapped(ids)

    # ---- open-time reading and checks ------------------------------------------------------
    def _lengths(self, i: int, k: int, col: _Column, ndocs: np.ndarray) -> np.ndarray:
        """int64 tokens of side k of every pair of file i (its chunks' `col`); checks every
        offset read."""
        parts, row = [], 0
        for c in range(len(ndocs)):
            offs = self.words[col.obase[c]: col.obase[c] + ndocs[c] + 1]
            lens = np.diff(offs)
            if (lens < 0).any() or offs[-1] > col.nvals[c] or offs[0] < 0:
                bad = int(np.argmax(lens < 0)) if (lens < 0).any() else 0
                raise self._corrupt_in(i, row + bad, f"{PAIR_COLUMNS[k]} list offsets out of "
                                       "order or outside the values")
            parts.append(lens)
            row += int(ndocs[c])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def file_counts(self, i: int) -> tuple[int, int, int]:
        """(pairs, source tokens, target tokens) of file i."""
        return self.file_stats[i]

    def max_token_sample(self, i: int) -> int:
        """Largest id in the first and last tokens of up to RANGE_CHECK_PROBES chunks of file i,
        both columns (read at open)."""
        return self.max_ids[i]

    def _max_token_sample(self, cols: list, ndocs: np.ndarray) -> int:
        top = 0
        chunks = np.unique(np.linspace(0, len(ndocs) - 1, RANGE_CHECK_PROBES).astype(int)) \
            if len(ndocs) else []
        for _obase, vbase, off0, ntok, _ in cols:
            for c in chunks:
                lo = int(vbase[c] + off0[c])
                hi = lo + int(ntok[c])
                for x, y in ((lo, min(hi, lo + RANGE_CHECK_BLOCK)),
                             (max(lo, hi - RANGE_CHECK_BLOCK), hi)):
                    if y > x:
                        top = max(top, int(self.tokens[x:y].max()))
        return top

    # ---- gathering ----------------------------------------------------------------------
    def locate(self, g: int) -> tuple[Path, int]:
        """(shard file, row in that file) of pair number g of the split."""
        c = int(np.searchsorted(self.doc_base, g, "right") - 1)
        f = int(np.searchsorted(self.file_chunks, c, "right") - 1)
        return self.paths[f], g - int(self.doc_base[self.file_chunks[f]])

    def _corrupt(self, g: int, what: str) -> DataError:
        c = int(np.searchsorted(self.doc_base, g, "right") - 1)
        f = int(np.searchsorted(self.file_chunks, c, "right") - 1)
        return self._corrupt_in(f, g - int(self.doc_base[self.file_chunks[f]]), what)

    def _corrupt_in(self, f: int, row: int, what: str) -> DataError:
        return DataError(f"{self.paths[f]}: pair {row} (row {row} of the file): {what} -- the "
                         "shard is damaged (changed after it was written?); run `python -m "
                         f"data_tools validate {self.shards.folder}`")

    def files_of(self, g: np.ndarray) -> np.ndarray:
        """Sorted ids of the files holding pairs g."""
        c = np.searchsorted(self.doc_base, np.asarray(g, np.int64), "right") - 1
        return np.unique(np.searchsorted(self.file_chunks, c, "right") - 1)

    def spans(self, g: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """(index of the first token in self.tokens, length) of side `side` (0 source, 1 target)
        of pairs g (n,); DataError when an offset read lies outside its record batch."""
        col = self.columns[side]
        if self.lazy:
            self._hold(self.files_of(g))
        c = np.searchsorted(self.doc_base, g, "right") - 1
        j = g - self.doc_base[c]
        o0, o1 = self.words[col.obase[c] + j], self.words[col.obase[c] + j + 1]
        bad = (o0 < col.off0[c]) | (o1 < o0) | (o1 - col.off0[c] > col.ntok[c])
        if bad.any():
            k = int(np.argmax(bad))
            raise self._corrupt(int(g[k]), f"{PAIR_COLUMNS[side]} list offsets "
                                f"{int(o0[k])}..{int(o1[k])} are outside their record batch")
        return col.vbase[c] + o0, o1 - o0

    def padded(self, g: np.ndarray, side: int, width: int, fill: int, eos_id: int
               ) -> np.ndarray:
        """Side `side` of pairs g as rows (n, width) int64: the tokens, EOS, then `fill`
        (width > every length). Ids checked < vocab_size."""
        start, length = self.spans(g, side)                       # (n,), (n,)
        col = np.arange(width)                                    # (width,)
        real = col < length[:, None]                              # (n, width)
        tokens = self.tokens[np.where(real, start[:, None] + col, 0)].astype(np.int64)
        out = np.where(real, tokens, fill)                        # (n, width) int64
        if real.any() and int(out[real].max()) >= self.vocab_size:
            row = int(np.argmax((np.where(real, out, 0) >= self.vocab_size).any(axis=1)))
            raise self._corrupt(int(g[row]), f"{PAIR_COLUMNS[side]} token id "
                                f"{int(out[row].max())} >= vocab_size {self.vocab_size}")
        out[np.arange(len(g)), length] = eos_id
        return out
