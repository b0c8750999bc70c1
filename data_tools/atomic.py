"""The one atomic-write helper of the project (data_tools and pretrain use it; torch-free).

A file is written to a temp name in the same folder, flushed and fsynced, then renamed over
the target, and the folder is fsynced so the rename itself survives a power cut. A reader sees
the old file or the complete new one, never a part. On any error the temp file is removed and
the target is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp"


def temp_name(path: Path) -> Path:
    """`.NAME.tmpPID` next to `path`: hidden, unique per process (two ranks never collide)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    """True for a name temp_name() makes (a leftover of a killed writer)."""
    return name.startswith(".") and TMP_MARK in name and name.rsplit(TMP_MARK, 1)[1].isdigit()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder by path; a filesystem that cannot fsync folders is tolerated."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL for folders on some network filesystems
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, umask_mode: bool = False) -> Iterator[Path]:
    """Yield a temp path to write `path`'s content to (by any writer that wants a path: pyarrow,
    tokenizers, shutil); on success it is fsynced and renamed over `path`. `umask_mode`: give
    the file the mode a new file gets (0666 less the umask) whatever the writer chose
    (safetensors writes 0600)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if umask_mode:
            os.chmod(tmp, new_file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def current_umask() -> int:
    """This process's umask (Linux: read from /proc, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back
    os.umask(mask)
    return mask


def with_umask(path: str | os.PathLike) -> None:
    """Give a file written by a library that creates it 0600 (safetensors does) the mode every
    other file gets: 0666 less the umask."""
    os.chmod(path, 0o666 & ~current_umask())


def new_file_mode() -> int:
    """0666 less the process umask: the mode open() gives a new file."""
    return 0o666 & ~current_umask()


# ---- outputs a user names (--out, --output): never a device, a FIFO or a folder -------------
class UnsafeOutputError(ValueError):
    """An output path that exists and is not what the command writes (e.g. /dev/null, a FIFO)."""


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists and is not a regular file ("a FIFO (named pipe)", "a
    character device", ...); None for a regular file or a missing path. Inputs a command reads
    whole (a config.json, a weights file) are refused at once when this is not None: /dev/zero
    never ends and a FIFO blocks."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` if it is absent or a regular file (which the command then replaces whole);
    UnsafeOutputError naming the option and what is there otherwise: a command must never
    replace /dev/null, a FIFO or a folder with its output."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows a symlink: what it points at counts
    except (FileNotFoundError, NotADirectoryError):
        return path
    except OSError as e:
        raise UnsafeOutputError(f"{option} {path}: cannot check it ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UnsafeOutputError(f"{option} {path} is {_kind(mode)}: refusing to replace it "
                                "with a file; give a new path or a regular file")
    return path


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` if it is absent or a folder; UnsafeOutputError naming what is there otherwise."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return path
    except OSError as e:
        raise UnsafeOutputError(f"{option} {path}: cannot check it ({e.strerror})") from None
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
        raise UnsafeOutputError(f"{option} {path} is {kind}; this command writes a folder there")
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace `path` with `data` (str as UTF-8) atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """JSON (indent 1, keys in the given order, trailing newline) written atomically."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")
