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
    """The pairs of one split over its shard files (in order)."""

    def __init__(self, paths: list[Path], value_type: pa.DataType, vocab_size: int):
        self.paths, self.vocab_size = paths, vocab_size
        self.files = MappedFiles(paths)
        self.words = self.files.view(np.int64)
        self.tokens = self.files.view(value_type.to_pandas_dtype())
        width = value_type.byte_width
        tables = [column_chunks(p, self.files.buffer(i), self.files.address, value_type,
                                PAIR_COLUMNS) for i, p in enumerate(paths)]
        self.file_chunks = np.cumsum([0] + [len(t[0]) for t in tables])   # chunks per file
        self.columns = []
        for k in range(len(PAIR_COLUMNS)):
            o_byte, v_byte, ndocs, first, nvals = np.concatenate([t[k] for t in tables]).T
            if (o_byte % 8).any() or (v_byte % width).any():
                raise DataError(f"{paths[0].parent}: Arrow buffers are not aligned")
            obase = o_byte // 8 + first
            off0 = self.words[obase]
            self.columns.append(_Column(obase, v_byte // width, off0,
                                        self.words[obase + ndocs] - off0, nvals))
            if k == 0:
                self.ndocs = ndocs
            elif (ndocs != self.ndocs).any():
                raise DataError(f"{paths[0].parent}: source and target columns differ in rows")
        self.doc_base = np.concatenate([[0], np.cumsum(self.ndocs)])      # (chunks + 1,)
        self.num_pairs = int(self.doc_base[-1])
        self.source_len, self.target_len = self._lengths(0), self._lengths(1)   # (pairs,) each

    # ---- open-time reading and checks ------------------------------------------------------
    def _lengths(self, k: int) -> np.ndarray:
        """(pairs,) int64 tokens of side k of every pair; checks every offset of that column."""
        col, parts = self.columns[k], []
        for c in range(len(self.ndocs)):
            offs = self.words[col.obase[c]: col.obase[c] + self.ndocs[c] + 1]
            lens = np.diff(offs)
            if (lens < 0).any() or offs[-1] > col.nvals[c] or offs[0] < 0:
                bad = int(np.argmax(lens < 0)) if (lens < 0).any() else 0
                raise self._corrupt(int(self.doc_base[c]) + bad,
                                    f"{PAIR_COLUMNS[k]} list offsets out of order or outside "
                                    "the values")
            parts.append(lens)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def file_counts(self, i: int) -> tuple[int, int, int]:
        """(pairs, source tokens, target tokens) of file i."""
        a, b = self.file_chunks[i], self.file_chunks[i + 1]
        return (int(self.ndocs[a:b].sum()),
                *(int(col.ntok[a:b].sum()) for col in self.columns))

    def max_token_sample(self, i: int) -> int:
        """Largest id in the first and last tokens of up to RANGE_CHECK_PROBES chunks of file i,
        both columns."""
        a, b = int(self.file_chunks[i]), int(self.file_chunks[i + 1])
        top = 0
        chunks = np.unique(np.linspace(a, b - 1, RANGE_CHECK_PROBES).astype(int)) if b > a else []
        for col in self.columns:
            for c in chunks:
                lo = int(col.vbase[c] + col.off0[c])
                hi = lo + int(col.ntok[c])
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
        path, row = self.locate(g)
        return DataError(f"{path}: pair {row} (row {row} of the file): {what} -- the shard is "
                         "damaged (changed after it was written?); run `python -m data_tools "
                         f"validate {path.parent.parent}`")

    def spans(self, g: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """(index of the first token in self.tokens, length) of side `side` (0 source, 1 target)
        of pairs g (n,); DataError when an offset read lies outside its record batch."""
        col = self.columns[side]
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
