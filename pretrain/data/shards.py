"""One shard folder (docs/design.md §2, §8): manifest checks, then the memory-mapped packed
stream of each split (pretrain.data.stream). Everything is checked before the first step, at a
cost of O(shard files + record batches), independent of the number of samples."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from data_tools.manifest import (
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    ManifestError,
    fingerprint,
    read_manifest,
    sha256_file,
)
from pretrain.data.stream import DataError, SplitStream

DTYPES = {"uint16": (pa.uint16(), 1 << 16), "uint32": (pa.uint32(), 1 << 32)}

class ShardFolder:
    """A checked, memory-mapped shard folder. Raises DataError naming the folder or file."""

    def __init__(self, folder: str | Path, tokenizer: str | Path | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such shard folder")
        try:
            self.manifest = read_manifest(self.folder)
        except ManifestError as e:
            raise DataError(str(e)) from None
        self._check_header()
        tok = self.manifest["tokenizer"]
        self.vocab_size = int(tok["vocab_size"])
        self.eos_id, self.pad_id = int(tok["eos_id"]), int(tok["pad_id"])
        self.sentinel_ids = [int(t) for t in tok.get("sentinel_ids") or []]
        self.tokenizer_path = self.folder / tok.get("file", "tokenizer.json")
        self.fingerprint = str(self.manifest["fingerprint"])
        self._check_tokenizer(tokenizer)
        self.streams = {split: self._open_split(split) for split in SPLITS}

    def _fail(self, problem: str) -> DataError:
        return DataError(f"{self.folder}: {problem}")

    def _check_header(self) -> None:
        m = self.manifest
        if m.get("format") != FORMAT:
            raise self._fail(f"manifest format is {m.get('format')!r}, expected {FORMAT!r}")
        if m.get("format_version") != FORMAT_VERSION:
            raise self._fail(f"manifest format_version is {m.get('format_version')!r}; this "
                             f"loader reads version {FORMAT_VERSION}")
        missing = [k for k in ("dtype", "tokenizer", "splits", "fingerprint") if k not in m]
        missing += [f"tokenizer.{k}" for k in ("sha256", "vocab_size", "eos_id", "pad_id")
                    if k not in (m.get("tokenizer") or {})]
        if missing:
            raise self._fail(f"manifest lacks {', '.join(missing)}")
        if m["fingerprint"] != fingerprint(m):
            raise self._fail("manifest fingerprint does not match its shard list (edited by hand?)")
        if m["dtype"] not in DTYPES:
            raise self._fail(f"manifest dtype {m['dtype']!r} is not one of {sorted(DTYPES)}")
        vocab = m["tokenizer"]["vocab_size"]
        if not isinstance(vocab, int) or not 0 < vocab <= DTYPES[m["dtype"]][1]:
            raise self._fail(f"vocab_size {vocab!r} does not fit dtype {m['dtype']}")

    def _check_tokenizer(self, run_tokenizer: str | Path | None) -> None:
        want = self.manifest["tokenizer"]["sha256"]
        if not self.tokenizer_path.is_file():
            raise self._fail(f"{self.tokenizer_path.name} is missing")
        if run_tokenizer is None:
            return
        path = Path(run_tokenizer)
        if not path.is_file():
            raise DataError(f"data.tokenizer {path}: no such file")
        got = sha256_file(path)
        if got != want:
            raise self._fail(f"tokenizer hash mismatch: the shards were written with a tokenizer "
                             f"of sha256 {want[:16]}..., the run's tokenizer {path} has "
                             f"{got[:16]}...; re-shard with this tokenizer or point "
                             "data.tokenizer at the folder's tokenizer.json")

    def _open_split(self, split: str) -> SplitStream:
        info = (self.manifest["splits"] or {}).get(split)
        if not info or not info.get("shards") or not info.get("tokens"):
            raise self._fail(f"the {split} split is empty (no documents with tokens); "
                             "re-shard with more input" + (" or a larger --val-fraction"
                                                           if split == "val" else ""))
        shards = [s for s in info["shards"] if s["documents"]]
        for shard in shards:
            self._check_file(shard)
        paths = [self.folder / s["file"] for s in shards]
        stream = SplitStream(paths, DTYPES[self.manifest["dtype"]][0], self.eos_id)
        for i, (path, shard) in enumerate(zip(paths, shards)):
            docs, tokens = stream.file_counts(i)
            if (docs, tokens) != (shard["documents"], shard["tokens"]):
                raise DataError(f"{path}: holds {docs} documents / {tokens} tokens, the "
                                f"manifest says {shard['documents']} / {shard['tokens']}")
            top = stream.max_token_sample(i)
            if top >= self.vocab_size:
                raise DataError(f"{path}: token id {top} >= vocab_size {self.vocab_size} "
                                "(shards and manifest disagree; run `python -m data_tools "
                                "validate`)")
        return stream

    def _check_file(self, shard: dict) -> None:
        path = self.folder / shard["file"]
        if not path.is_file():
            raise DataError(f"{path}: shard file listed in the manifest is missing")
        size = path.stat().st_size
        if size != shard["file_bytes"]:
            raise DataError(f"{path}: {size} bytes, the manifest says {shard['file_bytes']} "
                            "(truncated or rewritten; run `python -m data_tools validate`)")

    def text_bytes(self, split: str) -> int:
        return int(self.manifest["splits"][split].get("text_bytes", 0))
