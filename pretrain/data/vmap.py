"""Memory-map several files read-only into ONE contiguous range of virtual addresses (POSIX).

Then every shard file of a split is addressed through a single numpy array, so a batch of
windows spread over hundreds of shard files is still one vectorised gather. Only address space
is reserved up front (PROT_NONE, no memory); pages are read in by the kernel on first access,
exactly as with an ordinary mmap. Python's mmap module cannot place a mapping at an address,
hence libc's mmap through ctypes. Files can also be mapped into their reserved slots one by one,
later, and unmapped again: the loader over object storage keeps only the shards of its node's
cache mapped (pretrain.data.cache).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_PROT_NONE = 0
_MAP_FIXED = 0x10                      # the same value on Linux and macOS
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if os.uname().sysname == "Linux" else 0)


def _mmap(addr: int | None, size: int, prot: int, flags: int, fd: int) -> int:
    got = _libc.mmap(addr, size, prot, flags, fd, 0)
    if got in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap failed: {os.strerror(err)}")
    return got


class MappedFiles:
    """Files mapped back to back (each at a page boundary) into one read-only address range.

    A slot is reserved for every file up front from its size; a file is mapped into its slot at
    once (`paths` given) or later (`map`), and can be unmapped again (`unmap`: the slot goes back
    to inaccessible address space, the file's pages are released). Reading an unmapped slot
    kills the process (SIGSEGV): callers check `mapped` first."""

    def __init__(self, paths: list[Path] | None = None, sizes: list[int] | None = None):
        if sizes is None:
            sizes = [Path(p).stat().st_size for p in paths or []]
        self.sizes = [int(s) for s in sizes]
        self.paths: list[Path | None] = [None] * len(self.sizes)
        self.mapped = np.zeros(len(self.sizes), bool)
        page = mmap.PAGESIZE
        ends = np.cumsum([-(-max(s, 1) // page) * page for s in self.sizes])
        self.starts = [0, *ends[:-1].tolist()]               # byte offset of each file
        self.total = int(ends[-1]) if self.sizes else page
        self.address = _mmap(None, self.total, _PROT_NONE,
                             mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1)
        weakref.finalize(self, _libc.munmap, self.address, self.total)
        for i, path in enumerate(paths or []):
            self.map(i, path)

    def map(self, i: int, path: Path) -> None:
        """Map file i (which must have the size its slot was made for) into its slot."""
        size = Path(path).stat().st_size
        if size != self.sizes[i]:
            raise ValueError(f"{path}: {size} bytes, its slot holds {self.sizes[i]}")
        if size:
            fd = os.open(path, os.O_RDONLY)
            try:
                _mmap(self.address + self.starts[i], size, mmap.PROT_READ,
                      mmap.MAP_SHARED | _MAP_FIXED, fd)
            finally:
                os.close(fd)
        self.paths[i] = Path(path)
        self.mapped[i] = True

    def unmap(self, i: int) -> None:
        """Drop file i's mapping (its slot stays reserved, inaccessible)."""
        if not self.mapped[i]:
            return
        if self.sizes[i]:
            _mmap(self.address + self.starts[i], self.sizes[i], _PROT_NONE,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE | _MAP_FIXED, -1)
        self.mapped[i] = False

    def view(self, dtype: np.dtype) -> np.ndarray:
        """The whole range as one array of `dtype` (file i starts at byte starts[i])."""
        dtype = np.dtype(dtype)
        raw = (ctypes.c_char * self.total).from_address(self.address)
        raw.owner = self                       # the mapping lives as long as any view of it
        arr = np.frombuffer(raw, dtype, count=self.total // dtype.itemsize)
        arr.flags.writeable = False
        return arr

    def buffer(self, i: int) -> pa.Buffer:
        """File i as a zero-copy pyarrow buffer (keeps this mapping alive; file i mapped)."""
        return pa.foreign_buffer(self.address + self.starts[i], self.sizes[i], base=self)
