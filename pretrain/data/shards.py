"""One shard folder (docs/design.md §2, §8): the typed manifest (data_tools.manifest checks its
keys, types, format version and id ranges), then the memory-mapped packed stream of each split
(pretrain.data.stream). Everything is checked before the first step, at a cost of O(shard files
+ record batches), independent of the number of samples; every gathered window is checked
again as it is read (stream.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

from data_tools.manifest import SPLITS, Manifest, ManifestError, ShardEntry, sha256_file
from data_tools.remote import RemoteError, is_remote
from pretrain.data.cache import NodeCache, ShardRef
from pretrain.data.pairs import PairSplit
from pretrain.data.shardset import CachedShards, LocalShards
from pretrain.data.stream import DataError, SplitStream

VALUE_TYPES = {"uint16": pa.uint16(), "uint32": pa.uint32()}


class ShardFolder:
    """A checked, memory-mapped shard folder. Raises DataError naming the folder or file.

    An s3:// folder (`cache` given) is checked the same way at open — endpoint, credentials,
    bucket, manifest, every shard present with its size, the tokenizer (copied into the cache)
    — and its shards are read through the node cache as batches need them."""

    def __init__(self, folder: str | Path, tokenizer: str | Path | None = None,
                 cache: NodeCache | None = None):
        self.remote = is_remote(str(folder))
        self.cache = cache
        self.tokenizer_bytes = 0      # s3://: the tokenizer's copy in the node cache
        if self.remote:
            self._open_remote(str(folder))
        else:
            self._open_local(Path(folder))
        m = self.manifest
        if problems := m.inconsistencies():
            raise DataError(f"{self.folder}/manifest.json: " + "; ".join(problems))
        self.vocab_size, self.eos_id, self.pad_id = (m.tokenizer.vocab_size, m.tokenizer.eos_id,
                                                     m.tokenizer.pad_id)
        self.sentinel_ids = list(m.tokenizer.sentinel_ids)
        self.fingerprint = m.fingerprint
        self._check_tokenizer(tokenizer)
        self.is_pairs = m.is_pairs
        # documents: the packed stream of each split; pairs: the pairs of each split
        self.streams: dict[str, SplitStream] = {}
        self.pairs: dict[str, PairSplit] = {}
        for split in SPLITS:
            if self.is_pairs:
                self.pairs[split] = self._open_pairs(split)
            else:
                self.streams[split] = self._open_split(split)

    def _open_local(self, folder: Path) -> None:
        self.folder = folder
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such shard folder")
        try:
            self.manifest = Manifest.read(self.folder)
        except ManifestError as e:
            raise DataError(str(e)) from None
        self.tokenizer_path = self.folder / self.manifest.tokenizer.file

    def _open_remote(self, url: str) -> None:
        """Manifest, shard list and tokenizer from object storage; every failure a DataError
        naming what is wrong (credentials, bucket, key, endpoint)."""
        from data_tools.remote_folder import START_DEADLINE_S, open_remote_folder

        self.folder = url.rstrip("/")
        if self.cache is None:
            raise DataError(f"{url}: an s3:// folder needs the node cache (data.cache_dir)")
        try:
            deadline_s = min(START_DEADLINE_S, self.cache.timeout_s)
            self.source = open_remote_folder(url, deadline_s=deadline_s)
            self.manifest = self.source.manifest
            tok = self.manifest.tokenizer
            # through the cache like a shard (one download per node, counted in the limit:
            # remote_plan's tokenizer term), pinned while this process runs
            self.tokenizer_bytes = self.source.objects[tok.file]
            ref = ShardRef(self.source.shard_url(tok.file), self.tokenizer_bytes, tok.sha256)
            self.tokenizer_path = self.cache.get(ref, pin=True,
                                                 deadline=time.monotonic() + deadline_s)
        except (RemoteError, ManifestError) as e:
            raise DataError(str(e)) from None

    def _shards(self, shards: list[ShardEntry]):
        """The files of one split: local paths, or cache-backed refs to object storage."""
        if not self.remote:
            for shard in shards:
                self._check_file(shard)
            return LocalShards(self.folder, [self.folder / s.file for s in shards],
                               [s.file_bytes for s in shards])
        refs = [ShardRef(self.source.shard_url(s.file), s.file_bytes, s.sha256) for s in shards]
        return CachedShards(self.folder, refs, self.cache)

    def _fail(self, problem: str) -> DataError:
        return DataError(f"{self.folder}: {problem}")

    def _check_tokenizer(self, run_tokenizer: str | Path | None) -> None:
        want = self.manifest.tokenizer.sha256
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
        info = self.manifest.splits[split]
        if not info.tokens:
            raise self._fail(f"the {split} split is empty (no documents with tokens); "
                             "re-shard with more input" + (" or --val-tokens N"
                                                           if split == "val" else ""))
        shards = [s for s in info.shards if s.documents]
        return SplitStream(self._shards(shards), VALUE_TYPES[self.manifest.dtype], self.eos_id,
                           self.vocab_size, [(s.documents, s.tokens) for s in shards])

    def _open_pairs(self, split: str) -> PairSplit:
        info = self.manifest.splits[split]
        if not info.documents:
            raise self._fail(f"the {split} split holds no pairs; re-shard with more input"
                             + (" or a larger --val-fraction" if split == "val" else ""))
        shards = [s for s in info.shards if s.documents]
        pairs = PairSplit(self._shards(shards), VALUE_TYPES[self.manifest.dtype],
                          self.vocab_size)
        for i, (path, shard) in enumerate(zip(pairs.paths, shards)):
            got = pairs.file_counts(i)
            want = (shard.documents, shard.source_tokens, shard.target_tokens)
            if got != want:
                raise DataError(f"{path}: holds {got[0]} pairs / {got[1]} source / {got[2]} "
                                f"target tokens, the manifest says {want[0]} / {want[1]} / "
                                f"{want[2]}")
            top = pairs.max_token_sample(i)
            if top >= self.vocab_size:
                raise DataError(f"{path}: token id {top} >= vocab_size {self.vocab_size} "
                                "(shards and manifest disagree; run `python -m data_tools "
                                "validate`)")
        return pairs

    def _check_file(self, shard: ShardEntry) -> None:
        path = self.folder / shard.file
        if not path.is_file():
            raise DataError(f"{path}: shard file listed in the manifest is missing")
        size = path.stat().st_size
        if size != shard.file_bytes:
            raise DataError(f"{path}: {size} bytes, the manifest says {shard.file_bytes} "
                            "(truncated or rewritten; run `python -m data_tools validate`)")

    def text_bytes(self, split: str) -> int:
        return self.manifest.splits[split].text_bytes
