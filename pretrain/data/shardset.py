"""The shard files of one split, as the memory-mapped readers (stream.py, pairs.py) see them:
a local folder's files (all there), or object-storage shards made local through the node
cache (pretrain.data.cache), a few at a time.

Both give `names` (for messages: paths, or s3:// addresses), `sizes` (bytes, from the
manifest), `folder` (the shard folder, for the `validate` hint) and `lazy`; `acquire(ids)`
returns local paths (pinned in the cache until `release`), `make_room(needed, mapped)` says
which mapped files to let go of so this process stays within `budget` mapped files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data_tools.remote import RemoteError, RemoteUnavailable
from pretrain.data.cache import NodeCache, ShardRef
from pretrain.data.stream import DataError


class LocalShards:
    """Files of a local shard folder: all mapped at open, never let go of."""

    lazy = False
    budget = sys.maxsize

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


class CachedShards:
    """Object-storage shards through the node cache: at most `cache.budget` mapped at once
    (the least recently used ones are let go of first)."""

    lazy = True

    def __init__(self, folder: str, refs: list[ShardRef], cache: NodeCache):
        self.folder, self.refs, self.cache = folder, list(refs), cache
        self.names = [str(r.url) for r in refs]
        self.sizes = [r.size for r in refs]
        self._used = np.zeros(len(refs), np.int64)     # last use (a counter), per file
        self._clock = 0

    @property
    def budget(self) -> int:
        return self.cache.budget

    def acquire(self, ids: list[int]) -> list[Path]:
        """Local paths of files `ids`, each pinned (all or none: a failure unpins the rest)."""
        self.touch(ids)
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

    def release(self, ids) -> None:
        self.cache.unpin([self.refs[int(i)].sha256 for i in ids])

    def touch(self, ids) -> None:
        self._clock += 1
        self._used[np.asarray(ids, np.int64)] = self._clock

    def make_room(self, needed, mapped) -> list[int]:
        """Mapped files to let go of (least recently used first, never one in `needed`) so
        that the mapped and the needed ones fit in the budget together."""
        needed = set(int(i) for i in needed)
        keep = [int(i) for i in mapped if int(i) not in needed]
        excess = len(keep) + len(needed) - self.budget
        if excess <= 0:
            return []
        keep.sort(key=lambda i: self._used[i])
        return keep[:excess]

    def refs_of(self, ids) -> list[ShardRef]:
        return [self.refs[int(i)] for i in ids]
