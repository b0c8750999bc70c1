"""Sample order as computed functions of a position: no index is built or stored.

- `Permutation`: a keyed (unbalanced) Feistel network on [0, 2^bits) with cycle walking, a
  bijection of [0, n) for any n; O(1) memory, vectorised over numpy arrays of positions.
- `BlockPermutation`: the same within contiguous blocks of indices, the blocks in a random
  order (a shuffle whose consecutive positions read a few shard files: object storage).
- `Mixture`: which folder the p-th sample comes from, and how many samples that folder gave
  before it, from a fixed table of one block of `MIX_BLOCK` slots (evenly interleaved).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

FEISTEL_ROUNDS = 4
MIX_BLOCK = 10_000   # slots per mixing block: weights are realised to 1e-4 in every block

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed 64-bit hash (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def derive_keys(*words: int | str, count: int = FEISTEL_ROUNDS) -> np.ndarray:
    """`count` 64-bit keys from any tuple of ints/strings (e.g. seed, folder, epoch)."""
    digest = hashlib.blake2b(json.dumps(words).encode(), digest_size=8 * count).digest()
    return np.frombuffer(digest, dtype=np.uint64).copy()


class Permutation:
    """A pseudo-random bijection of [0, n) keyed by `keys`: an unbalanced Feistel network on
    bits = bit_length(n - 1) bits (domain < 2n, so cycle walking needs < 2 passes on average)."""

    def __init__(self, n: int, keys: np.ndarray):
        if n < 1:
            raise ValueError(f"cannot permute an empty range (n={n})")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.left_bits, self.right_bits = (bits + 1) // 2, bits // 2
        self.keys = keys

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        a, b = self.left_bits, self.right_bits          # bit widths of left, right
        left, right = x >> np.uint64(b), x & np.uint64((1 << b) - 1)
        for k in self.keys:                              # (L, R) -> (R, L ^ F(R)); widths swap
            f = _mix64(right ^ k) & np.uint64((1 << a) - 1)
            left, right = right, left ^ f
            a, b = b, a
        return (left << np.uint64(b)) | right

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Images of positions x (int array, values in [0, n))."""
        y = self._feistel(np.asarray(x, np.uint64))
        todo = np.flatnonzero(y >= self.n)
        while todo.size:                                 # cycle walking
            y[todo] = self._feistel(y[todo])
            todo = todo[y[todo] >= self.n]
        return y.astype(np.int64)


class Mixture:
    """Position p -> (folder k, count c): the p-th sample is folder k's c-th sample.

    Each block of MIX_BLOCK positions holds n_k slots of folder k (largest-remainder rounding of
    weight_k * MIX_BLOCK), interleaved evenly; so c = block * n_k + rank of the slot."""

    def __init__(self, weights: list[float]):
        w = np.asarray(weights, float) / float(np.sum(weights))
        raw = w * MIX_BLOCK
        counts = np.floor(raw).astype(np.int64)
        short = MIX_BLOCK - int(counts.sum())
        counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
        if (counts == 0).any():
            raise ValueError(f"mixing weights {list(weights)}: a weight below 1/{MIX_BLOCK} "
                             "would never be sampled")
        self.slots_per_block = counts
        keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
        folder = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
        rank = np.concatenate([np.arange(c) for c in counts])
        order = np.argsort(keys, kind="stable")
        self.slot_folder, self.slot_rank = folder[order], rank[order]

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block, slot = np.divmod(np.asarray(positions, np.int64), MIX_BLOCK)
        folder = self.slot_folder[slot]
        return folder, block * self.slots_per_block[folder] + self.slot_rank[slot]


class BlockPermutation:
    """A keyed bijection of [0, n) that stays within blocks: the indices fall into contiguous
    blocks of `block` (the last one shorter), the blocks are visited in a random order
    (a Permutation of the blocks), and each block's indices in a random order of its own.
    Consecutive positions read one block, so over object storage the loader needs only the
    few shards of the current block at a time (data.shuffle_block_shards)."""

    def __init__(self, n: int, block: int, words: tuple):
        if n < 1:
            raise ValueError(f"cannot permute an empty range (n={n})")
        self.n, self.block, self.words = n, max(1, min(int(block), n)), words
        self.num_blocks = -(-n // self.block)
        self.last_size = n - (self.num_blocks - 1) * self.block
        self.blocks = Permutation(self.num_blocks, derive_keys("blocks", *words))
        visit = self.blocks(np.arange(self.num_blocks))         # slot -> block (O(blocks))
        self.last_slot = int(np.flatnonzero(visit == self.num_blocks - 1)[0])
        self._inner: dict[int, Permutation] = {}

    def _perm(self, b: int) -> Permutation:
        if b not in self._inner:
            if len(self._inner) >= 64:
                self._inner.pop(next(iter(self._inner)))
            size = self.last_size if b == self.num_blocks - 1 else self.block
            self._inner[b] = Permutation(size, derive_keys("within", *self.words, b))
        return self._inner[b]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Images of positions x (int array, values in [0, n))."""
        x = np.asarray(x, np.int64)
        size, slot_l, short = self.block, self.last_slot, self.last_size
        before = x < slot_l * size                     # slots ahead of the short block
        in_short = ~before & (x < slot_l * size + short)
        slot = np.where(before, x // size, np.where(in_short, slot_l, (x - short) // size + 1))
        offset = np.where(before, x % size,
                          np.where(in_short, x - slot_l * size, (x - short) % size))
        block = self.blocks(slot)
        out = np.empty_like(x)
        for b in np.unique(block).tolist():
            sel = block == b
            out[sel] = b * size + self._perm(b)(offset[sel])
        return out
