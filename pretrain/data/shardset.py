"""The shard files of one split, as the memory-mapped readers (stream.py, pairs.py) see them:
a local folder's files (all there), or object-storage shards made local through the node
cache (pretrain.data.cache), a few at a time.

Both give `names` (for messages: paths, or s3:// addresses), `sizes` (bytes, from the
manifest), `folder` (the shard folder, for the `validate` hint) and `lazy`; `acquire(ids)`
returns local paths (pinned in the cache until `release`), `make_room(needed, mapped)` says
which mapped files to let go of so this process stays within `budget` mapped files."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from data_tools.remote import RemoteError, RemoteUnavailable
from pretrain.data.cache import NodeCache, ShardRef
from pretrain.data.stream import DataError


class LocalShards:
    """Files of a local shard folder: all mapped at open, never let go of."""

    lazy = False
    budget = sys.maxsize
    all_fit = True

    def __init__(self, folder: Path, paths: list[Path], sizes: list[int]):
        self.folder, self.names, self.sizes = folder, list(paths), list(sizes)

    def acquire(self, ids: list[int]) -> list[Path]:
        return [self.names[i] for i in ids]

    def release(self, ids) -> None:
        pass

    def touch(self, ids) -> None:
        pass

    def make_room(self, needed, mapped) -> list[int]:
        return []

    def bind(self, drop) -> None:
        pass

    def mapped(self, ids) -> None:
        pass


class CachedShards:
    """Object-storage shards through the node cache: this process maps at most
    `cache.budget` of them at once, over all its splits (the least recently used are let go
    of first)."""

    lazy = True

    def __init__(self, folder: str, refs: list[ShardRef], cache: NodeCache):
        self.folder, self.refs, self.cache = folder, list(refs), cache
        self.names = [str(r.url) for r in refs]
        self.sizes = [r.size for r in refs]
        self._drop: Callable[[int], None] = lambda i: None
        cache.files_registered += len(self.refs)

    @property
    def budget(self) -> int:
        return self.cache.budget

    @property
    def all_fit(self) -> bool:
        """Whether this process may map every shard file it reads (of all splits and folders)
        at once: then nothing it maps is ever let go of, and the LRU order needs no upkeep."""
        return self.cache.budget >= self.cache.files_registered

    def acquire(self, ids: list[int]) -> list[Path]:
        """Local paths of files `ids`, each pinned (all or none: a failure unpins the rest);
        the caller maps them, then calls `mapped`."""
        got: list[Path] = []
        try:
            for i in ids:
                got.append(self.cache.get(self.refs[i], pin=True))
        except BaseException as e:
            self.cache.unpin([self.refs[i].sha256 for i in ids[:len(got)]])
            if isinstance(e, RemoteError) and not isinstance(e, RemoteUnavailable):
                raise DataError(str(e)) from None   # e.g. its bytes differ from the manifest
            raise
        return got

    def touch(self, ids) -> None:
        self.mapped(ids)

    def release(self, ids) -> None:
        for i in ids:
            self.cache.unmapped(self, int(i))
        self.cache.unpin([self.refs[int(i)].sha256 for i in ids])

    def bind(self, drop: Callable[[int], None]) -> None:
        """The reader's callback that unmaps its file i (then released here)."""
        self._drop = drop

    def make_room(self, needed, mapped) -> list[int]:
        """Let go of this process's least recently used mapped shards — of this split or any
        other (train, val, other folders) — so that `needed` fit in the process's budget."""
        self.cache.room_for(self, needed)
        return []

    def mapped(self, ids) -> None:
        self.cache.mapped(self, ids)

    def let_go(self, i: int) -> None:
        """The cache asks: unmap file i (the reader's callback) and unpin it."""
        self._drop(i)
        self.release([i])

    def refs_of(self, ids) -> list[ShardRef]:
        return [self.refs[int(i)] for i in ids]
