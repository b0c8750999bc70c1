"""Which documents go to the val split: always a deterministic function of the documents'
bytes (a 64-bit blake2b hash of each), never of `--workers`, timing or where a run resumed.

- `--val-fraction f`: a document is val when its hash, read as a number in [0, 1), is < f.
  Decided per document on sight; the val size follows the corpus (and can be tiny). When no
  hash falls below f (a small corpus), the document with the smallest hash is val instead, as
  long as another one is left for train: while val is empty the smallest-hash document seen so
  far is held back (one document in memory, saved with each checkpoint like the budget's
  candidates), and it goes to val at the end if val is still empty. f = 0 asks for no val.
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


def _key(doc: Doc) -> tuple[int, tuple[int, int]]:
    return doc.hash, doc.pos  # unique per document


class FractionSplit:
    """val when hash / 2^64 < fraction, decided on sight; if none is, the smallest-hash
    document (see the module doc)."""

    def __init__(self, fraction: float):
        self.limit = fraction * (1 << 64)
        self.keep_one = fraction > 0
        self.val_seen = False  # some document's hash fell below the fraction
        self.reserve: Doc | None = None  # while not val_seen: the smallest-hash one so far
        self.trained = False  # a document other than the reserve went to train
        self.kept_one = False  # finish() moved the reserve to val

    def offer(self, doc: Doc) -> list[tuple[str, Doc]]:
        if doc.hash < self.limit:
            out = [] if self.reserve is None else [("train", self.reserve)]
            self.val_seen, self.reserve = True, None
            return [*out, ("val", doc)]
        if self.val_seen or not self.keep_one:
            return [("train", doc)]
        out = []
        if self.reserve is not None and _key(doc) < _key(self.reserve):
            out, self.reserve = [("train", self.reserve)], None
        if self.reserve is None:
            self.reserve = dataclasses.replace(doc, tokens=doc.tokens.copy())  # not a view
            self.trained = self.trained or bool(out)
            return out
        self.trained = True
        return [("train", doc)]

    def held(self) -> list[Doc]:
        return [] if self.reserve is None else [self.reserve]

    def restore(self, docs: list[Doc]) -> None:
        """From a checkpoint, which follows a written shard: a held reserve means val is
        empty so far and train is not; none means val already has a document."""
        assert len(docs) <= 1, "a fraction split holds at most one document"
        self.reserve = docs[0] if docs else None
        self.trained, self.val_seen = bool(docs), not docs

    def finish(self) -> list[tuple[str, Doc]]:
        """The reserve: to val when val is empty and train keeps a document, else to train."""
        if self.reserve is None:
            return []
        doc, self.reserve = self.reserve, None
        self.kept_one = self.trained
        return [("val" if self.trained else "train", doc)]


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


def more_val_hint(tokens: int) -> str:
    """The fix for a val split too small, in one wording: `shard`'s warning and the trainer's
    refusal (pretrain.objectives) both say it, each with the token count it knows to ask for."""
    return f"re-shard with `arrowtrain data shard ... --val-tokens {max(1, tokens)}`"
