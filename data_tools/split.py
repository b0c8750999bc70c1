"""Which documents go to the val split: always a deterministic function of the documents'
bytes (a 64-bit blake2b hash of each), never of `--workers`, timing or where a run resumed.

- `--val-fraction f`: a document is val when its hash, read as a number in [0, 1), is < f.
  Decided per document on sight; the val size follows the corpus (and can be tiny).
- `--val-tokens N`: val is the set of documents with the *smallest* hashes whose tokens first
  reach N (ties: earlier input first). One pass: a max-heap holds the current candidates
  (about N tokens); a newcomer with a smaller hash pushes out the largest-hash candidates no
  longer needed, and those go to train at that moment. So the budget is met exactly (it is
  overshot by less than one document) without a second pass over the corpus or a guess of its
  size, and membership does not depend on the input order. Val documents are written at the
  end, in input order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from dataclasses import dataclass

import numpy as np

# "Useful" val split: 128 windows of a typical seq_len 1024. 128 windows is one evaluation
# micro-batch of 16 on 8 ranks (the trainer needs at least micro_batch x ranks val samples),
# and the mean loss over n windows has a standard error of sigma/sqrt(n): 1/sqrt(128) = 9% of
# the per-window spread, small enough to compare checkpoints; 5 windows would be 45%.
USEFUL_VAL_WINDOWS = 128
TYPICAL_SEQ_LEN = 1024
USEFUL_VAL_TOKENS = USEFUL_VAL_WINDOWS * TYPICAL_SEQ_LEN


def doc_hash(utf8: bytes) -> int:
    """A document's hash, uniform in [0, 2^64)."""
    return int.from_bytes(hashlib.blake2b(utf8, digest_size=8).digest(), "little")


@dataclass
class Doc:
    """A tokenized document on its way to a split."""
    hash: int
    pos: tuple[int, int]  # (file index, record index): its place in the input order
    tokens: np.ndarray  # (N,) shard dtype; a pair: the source's tokens, then the target's
    text_bytes: int
    source_len: int | None = None  # a pair: where the target starts in `tokens`


class FractionSplit:
    """val when hash / 2^64 < fraction, decided on sight."""

    def __init__(self, fraction: float):
        self.limit = fraction * (1 << 64)

    def offer(self, doc: Doc) -> list[tuple[str, Doc]]:
        return [("val" if doc.hash < self.limit else "train", doc)]

    def held(self) -> list[Doc]:
        return []

    def restore(self, docs: list[Doc]) -> None:
        assert not docs, "a fraction split holds no documents"

    def finish(self) -> list[tuple[str, Doc]]:
        return []


class TokenBudgetSplit:
    """val = the smallest-hash documents whose tokens first reach `budget` (see module doc)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.heap: list[tuple[int, int, int, Doc]] = []  # top = the largest (hash, pos)
        self.tokens = 0

    @staticmethod
    def _entry(doc: Doc) -> tuple[int, int, int, Doc]:
        return (-doc.hash, -doc.pos[0], -doc.pos[1], doc)  # (hash, pos) is unique per document

    def offer(self, doc: Doc) -> list[tuple[str, Doc]]:
        """Documents that go to train now (possibly `doc` itself, possibly earlier ones)."""
        if self.tokens >= self.budget and self.heap and \
                (doc.hash, doc.pos) > (self.heap[0][3].hash, self.heap[0][3].pos):
            return [("train", doc)]
        doc = dataclasses.replace(doc, tokens=doc.tokens.copy())  # not a batch's view
        heapq.heappush(self.heap, self._entry(doc))
        self.tokens += len(doc.tokens)
        out = []
        while self.heap and self.tokens - len(self.heap[0][3].tokens) >= self.budget:
            evicted = heapq.heappop(self.heap)[3]
            self.tokens -= len(evicted.tokens)
            out.append(("train", evicted))
        return out

    def held(self) -> list[Doc]:
        """The current candidates, in input order (what a resume checkpoint stores)."""
        return sorted((e[3] for e in self.heap), key=lambda d: d.pos)

    def restore(self, docs: list[Doc]) -> None:
        self.heap = [self._entry(d) for d in docs]
        heapq.heapify(self.heap)
        self.tokens = sum(len(d.tokens) for d in docs)

    def finish(self) -> list[tuple[str, Doc]]:
        """The val documents, in input order."""
        docs, self.heap, self.tokens = self.held(), [], 0
        return [("val", d) for d in docs]


def make_split(val_fraction: float | None, val_tokens: int | None):
    return TokenBudgetSplit(val_tokens) if val_tokens is not None else \
        FractionSplit(val_fraction or 0.0)


def describe_choice(args: dict, unit: str = "document") -> str:
    """How the val split of a manifest was chosen, from its recorded arguments."""
    if args.get("val_tokens") is not None:
        return (f"--val-tokens {args['val_tokens']:,}: the {unit}s with the smallest hashes "
                f"until {args['val_tokens']:,} tokens")
    if args.get("val_fraction") is not None:
        return (f"--val-fraction {args['val_fraction']}: each {unit} whose hash is below "
                f"{args['val_fraction']}")
    return "not recorded"


def too_small(val_tokens: int) -> bool:
    return val_tokens < USEFUL_VAL_TOKENS
