"""Tokenizing batches of documents into flat numpy token arrays, in this process or a worker.

Very long documents are encoded in pieces cut only where byte-level BPE's pre-tokenizer would cut
anyway (a space or newline between two printable ASCII characters), so the ids are exactly those
of encoding the whole text while memory stays bounded (a 50 MB document no longer needs ~8 GB).
"""

from __future__ import annotations

import itertools
import os
import re

import numpy as np

LONG_DOC_CHARS = 1 << 20  # documents longer than this are encoded piecewise
PIECE_CHARS = 1 << 18  # target piece length; pieces are encoded a group at a time
PIECES_PER_CALL = 16
# A cut before i is safe when text[i-1] and text[i+1] are printable non-space ASCII and text[i]
# is a space or newline: the GPT-2 pre-tokenizer regex then always starts a new piece at i.
_SAFE_CUT = re.compile(r"(?<=[!-~])[ \n](?=[!-~])")


def piecewise_safe(tok) -> bool:
    """True when cutting at _SAFE_CUT provably gives the same ids: no normalizer, a ByteLevel
    pre-tokenizer with the GPT-2 regex and no prefix space, a BPE model, and no non-special
    added token that could span a cut."""
    pre = tok.pre_tokenizer
    added_ok = all(t.special or not any(c in t.content for c in " \n")
                   for t in tok.get_added_tokens_decoder().values())
    return (tok.normalizer is None and type(pre).__name__ == "ByteLevel" and added_ok
            and not pre.add_prefix_space and pre.use_regex and type(tok.model).__name__ == "BPE")


def split_long(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut `text` into pieces of about piece_chars at safe points (a piece may be longer)."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        m = _SAFE_CUT.search(text, start + piece_chars)
        if m is None:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


class Encoder:
    """Turns a list of texts into (flat token ids, per-document lengths)."""

    def __init__(self, tokenizer_path: str, dtype: str, long_doc_chars: int = LONG_DOC_CHARS,
                 piece_chars: int = PIECE_CHARS, bos_id: int | None = None):
        from data_tools.tokenizer import load_tokenizer
        self.tok = load_tokenizer(tokenizer_path)
        self.dtype = np.dtype(dtype)
        self.bos_id = bos_id  # prepended to every text (the manifest's bos_prepended)
        self.piecewise = piecewise_safe(self.tok)
        self.long_doc_chars, self.piece_chars = long_doc_chars, piece_chars

    def _ids(self, texts: list[str]) -> list[np.ndarray]:
        encs = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.array(e.ids, dtype=self.dtype) for e in encs]

    def _encode_long(self, text: str) -> np.ndarray:
        pieces = split_long(text, self.piece_chars)
        parts = []
        for i in range(0, len(pieces), PIECES_PER_CALL):
            parts += self._ids(pieces[i:i + PIECES_PER_CALL])
        return np.concatenate(parts)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (tokens (N_tokens,) dtype, lengths (N_docs,) int64), documents in order, each
        starting with bos_id when there is one."""
        flat, lengths = self._encode(texts)
        if self.bos_id is None:
            return flat, lengths
        starts = np.cumsum(lengths) - lengths  # (N_docs,)
        return np.insert(flat, starts, self.bos_id).astype(self.dtype), lengths + 1

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        long = [self.piecewise and len(t) > self.long_doc_chars for t in texts]
        short = [t for t, is_long in zip(texts, long) if not is_long]
        encs = self.tok.encode_batch_fast(short, add_special_tokens=False) if short else []
        if not any(long):
            lengths = np.fromiter((len(e) for e in encs), np.int64, count=len(encs))
            flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), self.dtype,
                               count=int(lengths.sum()))
            return flat, lengths
        short_iter = iter(encs)
        arrays = [self._encode_long(t) if is_long else np.array(next(short_iter).ids, self.dtype)
                  for t, is_long in zip(texts, long)]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        return np.concatenate(arrays) if arrays else np.zeros(0, self.dtype), lengths


_WORKER: Encoder | None = None


def init_worker(tokenizer_path: str, dtype: str, bos_id: int | None = None) -> None:
    """Pool initializer: one single-threaded tokenizer per worker process."""
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _WORKER = Encoder(tokenizer_path, dtype, bos_id=bos_id)


def encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER.encode(texts)
