"""Shard folders of random token ids (documents, or source -> target pairs), for the loader's
tests and benchmarks: no tokenizer run, but the real writers (`data_tools.writer.write_shard`,
`write_pair_shard`) and the real manifest (`data_tools.manifest.Manifest`), so these folders
are what `python -m data_tools shard` writes, byte for byte in layout. Only the tokenizer file
is a stand-in."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from data_tools.atomic import write_atomic
from data_tools.manifest import Manifest, TokenizerInfo, dtype_for_vocab, sha256_file
from data_tools.writer import write_pair_shard, write_shard

Docs = tuple[np.ndarray, np.ndarray]   # (offsets (docs+1,) int64 from 0, values (tokens,))
TEXT_BYTES_PER_TOKEN = 4               # the stand-in text size behind each token


def docs_from_lists(docs: list[np.ndarray] | list[list[int]]) -> Docs:
    lengths = np.array([len(d) for d in docs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate([np.asarray(d, np.int64) for d in docs]) if len(docs) else \
        np.zeros(0, np.int64)
    return offsets, values


def random_docs(rng: np.random.Generator, num_tokens: int, mean_doc_len: int,
                low: int, high: int, dtype: type = np.int64) -> Docs:
    """Documents of geometric lengths (>= 1) totalling about num_tokens, ids in [low, high)."""
    n_docs = max(1, num_tokens // mean_doc_len)
    lengths = rng.geometric(1.0 / mean_doc_len, n_docs).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(low, high, int(offsets[-1]), dtype=dtype)
    return offsets, values


def write_folder(folder: str | Path, splits: dict[str, Iterable[Docs]], vocab_size: int, *,
                 eos_id: int = 0, pad_id: int = 1, sentinel_ids: list[int] | None = None,
                 batch_docs: int | None = None, tokenizer_text: str = '{"synthetic": true}',
                 ) -> dict:
    """Write `splits` ({"train": [shard docs, ...], "val": [...]}; shards may come from a
    generator, one at a time) as a shard folder, record batches of `batch_docs` documents
    (default: one per shard, as `shard` writes). Returns the manifest as a dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "tokenizer.json", tokenizer_text)
    dtype = dtype_for_vocab(vocab_size)
    shards = {"train": [], "val": [], **{split: [] for split in splits}}
    for split, docs_of_shards in splits.items():
        for i, (offsets, values) in enumerate(docs_of_shards):
            tokens = int(offsets[-1] - offsets[0])
            shards[split].append(write_shard(folder, f"{split}/{i:05d}.arrow", offsets, values,
                                             dtype, TEXT_BYTES_PER_TOKEN * tokens, batch_docs))
    tokenizer = TokenizerInfo(file="tokenizer.json", sha256=sha256_file(folder / "tokenizer.json"),
                              vocab_size=vocab_size, eos_id=eos_id, pad_id=pad_id, bos_id=None,
                              sentinel_ids=list(sentinel_ids or []))
    manifest = Manifest.new(tokenizer=tokenizer, dtype=dtype, shards=shards, inputs=[],
                            skipped={}, args={"synthetic": True}, timing={})
    manifest.write(folder)
    return manifest.to_dict()


def random_pairs(rng: np.random.Generator, num_pairs: int, mean_len: int, low: int, high: int,
                 ) -> tuple[Docs, Docs]:
    """(source, target) of num_pairs pairs, ids in [low, high): sources of geometric length
    (>= 1), each target within 2 tokens of its source's length (as translations go)."""
    src_len = rng.geometric(1.0 / mean_len, num_pairs)
    tgt_len = np.maximum(1, src_len + rng.integers(-2, 3, num_pairs))
    return tuple(docs_from_lists([rng.integers(low, high, n) for n in lengths])
                 for lengths in (src_len, tgt_len))


def write_pair_folder(folder: str | Path, splits: dict[str, Iterable[tuple[Docs, Docs]]],
                      vocab_size: int, *, eos_id: int = 0, pad_id: int = 1,
                      batch_rows: int | None = None,
                      tokenizer_text: str = '{"synthetic": true}') -> dict:
    """A pair folder (`data_tools shard --source-field/--target-field` layout): `splits` maps
    a split to its shards, each (source docs, target docs). Returns the manifest as a dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "tokenizer.json", tokenizer_text)
    dtype = dtype_for_vocab(vocab_size)
    shards = {"train": [], "val": []}
    for split, shard_pairs in splits.items():
        for i, (source, target) in enumerate(shard_pairs):
            tokens = int(source[0][-1] + target[0][-1])
            shards[split].append(write_pair_shard(folder, f"{split}/{i:05d}.arrow", source,
                                                  target, dtype, TEXT_BYTES_PER_TOKEN * tokens,
                                                  batch_rows))
    tokenizer = TokenizerInfo(file="tokenizer.json", sha256=sha256_file(folder / "tokenizer.json"),
                              vocab_size=vocab_size, eos_id=eos_id, pad_id=pad_id, bos_id=None,
                              sentinel_ids=[])
    manifest = Manifest.new(tokenizer=tokenizer, dtype=dtype, shards=shards, inputs=[],
                            skipped={}, args={"synthetic": True}, timing={}, pairs=True)
    manifest.write(folder)
    return manifest.to_dict()


def write_random_pair_folder(folder: str | Path, seed: int, train_pairs: Iterable[int],
                             val_pairs: Iterable[int], vocab_size: int, *, mean_len: int = 9,
                             batch_rows: int | None = None) -> dict:
    """A pair folder of random pairs (`random_pairs`, ids in [2, vocab_size)) from one seed:
    a train shard per count in `train_pairs`, then a val shard per count in `val_pairs`."""
    rng = np.random.default_rng(seed)
    splits = {split: [random_pairs(rng, n, mean_len, 2, vocab_size) for n in counts]
              for split, counts in (("train", train_pairs), ("val", val_pairs))}
    return write_pair_folder(folder, splits, vocab_size, batch_rows=batch_rows)
