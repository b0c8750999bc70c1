"""Corpus statistics a run is judged against: the unigram entropy of the training tokens.

A model that has learnt nothing beyond token frequencies reaches a loss equal to this entropy;
a trained model must end clearly below it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.manifest import Manifest


@dataclass(frozen=True)
class UnigramEntropy:
    nats_per_token: float
    bits_per_token: float
    tokens: int


def token_counts(data_dir: str | Path, split: str = "train") -> np.ndarray:
    """Count of each token id in a split's shards, one EOS per document included (the loader
    appends it to every document; pair folders: to each side of every pair)."""
    data_dir = Path(data_dir)
    manifest = Manifest.read(data_dir)  # ManifestError names the file and key
    tok = manifest.tokenizer
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for _, shard in manifest.shards(split):
        with pa.memory_map(str(data_dir / shard.file)) as source:
            table = pa.ipc.open_file(source).read_all()
        for column in manifest.columns:  # "tokens", or "source" and "target"
            for chunk in table.column(column).chunks:
                values = chunk.values.to_numpy(zero_copy_only=False)
                counts += np.bincount(values, minlength=counts.size)[: counts.size]
                counts[tok.eos_id] += len(chunk)
    return counts


def unigram_entropy(data_dir: str | Path, split: str = "train") -> UnigramEntropy:
    """H = -Σ p·log p over the split's token frequencies, in nats and bits per token."""
    counts = token_counts(data_dir, split)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"no tokens in split {split!r} of {data_dir}")
    p = counts[counts > 0] / total
    nats = float(-(p * np.log(p)).sum())
    return UnigramEntropy(nats, nats / math.log(2), total)
