"""The background checkpoint writer: one process per rank when `checkpoint.async` is on
(pretrain/train/async_ckpt.py starts it; docs/training.md#async-checkpoints).

    python -m pretrain.train.ckpt_writer ARENA_FD

The trainer stages a checkpoint's tensors into a shared arena (a memfd passed as ARENA_FD) and
sends one job per file on stdin: 8 bytes of length, then a pickle whose tensor storages are
references into the arena. The writer rebuilds each file's objects over the arena (no copy),
writes it as DeepSpeed's torch engine would (temp file, fsync, rename), hashes it, and at the
end of each checkpoint answers with one JSON line on stdout: the files with size and sha256, or
the first error (the failed file's temp is removed; the rest of that checkpoint is skipped).

A separate process, not a thread: serialising and hashing gigabytes would hold the trainer's
GIL. It runs at nice +10, so that where CPUs are short the training loop goes first. Signals
that stop the trainer (SIGINT, SIGTERM, SIGUSR1) are ignored here, because the trainer waits
for the write in flight before it stops and then says `quit`; a writer whose trainer dies goes
with it (PR_SET_PDEATHSIG, and EOF on stdin)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import pickle
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import torch

HEADER = struct.Struct("<Q")
# The trainer's stop signals: the writer ignores them (the trainer waits for the write in
# flight, then says `quit`). The trainer starts it with them blocked, so one that comes while
# this interpreter starts (importing torch takes seconds) stays pending until main() has set
# them to be ignored, and is then dropped: it cannot kill the writer before that.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# Tests only: hold each file this long before writing it, so that a test can act while a
# background write is certainly in flight (kill a rank or the writer, and see what follows).
TEST_DELAY_S = float(os.environ.get("ARROWTRAIN_TEST_WRITER_DELAY_S") or 0)
PR_SET_PDEATHSIG = 1


def send_message(stream: BinaryIO, message: dict[str, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_message(stream: BinaryIO) -> dict[str, Any] | None:
    """The next message, or None at EOF (the trainer is gone)."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


class ArenaView:
    """The writer's mapping of the arena; remapped when the trainer has grown it."""

    def __init__(self, fd: int):
        self.fd, self.map, self.size = fd, None, 0

    def storage(self, offset: int, nbytes: int) -> torch.UntypedStorage:
        if nbytes == 0:
            return torch.UntypedStorage(0)
        if offset + nbytes > self.size:
            self.size = os.fstat(self.fd).st_size
            self.map = mmap.mmap(self.fd, self.size)  # the old map goes when its tensors do
        return torch.frombuffer(self.map, dtype=torch.uint8, count=nbytes,
                                offset=offset).untyped_storage()


class _ArenaUnpickler(pickle.Unpickler):
    """Storages come back as views of the arena (one per staged storage, so tensors that
    shared one still do and torch.save writes it once)."""

    def __init__(self, data: bytes, arena: ArenaView):
        import io

        super().__init__(io.BytesIO(data))
        self.arena, self.seen = arena, {}

    def persistent_load(self, pid):
        kind, offset, nbytes, dtype = pid
        if (offset, nbytes) not in self.seen:
            self.seen[offset, nbytes] = self.arena.storage(offset, nbytes)
        untyped = self.seen[offset, nbytes]
        if kind == "untyped":
            return untyped
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=getattr(torch, dtype),
                                          _internal=True)


def write_file(path: Path, obj: Any, zipfile: bool) -> dict[str, Any]:
    """torch.save to PATH.tmp, fsync, rename; returns the file's size and sha256."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f, _use_new_zipfile_serialization=zipfile)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoint:
    """One checkpoint's jobs: files written so far, or the first error."""

    def __init__(self):
        self.files: dict[str, dict[str, Any]] = {}
        self.error: dict[str, Any] | None = None
        self.t0 = time.perf_counter()
        self.dirs: set[Path] = set()

    def write(self, job: dict[str, Any], arena: ArenaView) -> None:
        if self.error is not None:
            return  # this checkpoint failed already: it will be removed
        path = Path(job["path"])
        if TEST_DELAY_S:
            time.sleep(TEST_DELAY_S)
        try:
            obj = _ArenaUnpickler(job["payload"], arena).load()
            self.files[job["rel"]] = write_file(path, obj, job["zipfile"])
            self.dirs.add(path.parent)
        except Exception as e:  # noqa: BLE001 - reported to the trainer, which decides
            self.error = describe_error(path, e)

    def answer(self, tag: str) -> dict[str, Any]:
        if self.error is None:
            try:
                for d in self.dirs:
                    _fsync_dir(d)
            except OSError as e:
                self.error = describe_error(next(iter(self.dirs)), e)
        return {"tag": tag, "files": self.files if self.error is None else {},
                "error": self.error, "write_s": time.perf_counter() - self.t0}


def describe_error(path: Path, exc: BaseException) -> dict[str, Any]:
    from pretrain.train.checkpoint import _describe

    return _describe((str(path), exc), path.parent)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: EOF on stdin still ends the writer
        pass


def _warm_up() -> None:
    """Import DeepSpeed now, while the trainer starts: the first checkpoint's objects (loss
    scaler, ZeRO enums) would import it on unpickling, adding seconds to its write."""
    with contextlib.suppress(Exception):  # then unpickling imports it, or says why not
        import deepspeed  # noqa: F401


def main(argv: list[str]) -> int:
    _die_with_parent()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the trainer
    # answers go on a private copy of stdout; anything else printed (DeepSpeed's import
    # banner, warnings) goes to stderr, the rank's log
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    torch.set_num_threads(1)
    os.nice(10)  # background work: where CPUs are short, the training loop goes first
    _warm_up()
    arena = ArenaView(int(argv[0]))
    jobs = sys.stdin.buffer
    current = Checkpoint()
    while (msg := read_message(jobs)) is not None:
        if msg["op"] == "file":
            current.write(msg, arena)
        elif msg["op"] == "end":
            answers.write(json.dumps(current.answer(msg["tag"])) + "\n")
            answers.flush()
            current = Checkpoint()
        elif msg["op"] == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
