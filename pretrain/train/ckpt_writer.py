"""The background checkpoint writer: one process per rank when `checkpoint.async` is on
(pretrain/train/async_ckpt.py uses it; docs/training.md#async-checkpoints).

`fork_writer()` forks it from the rank at start-up, before the process group and the model
exist, so it shares the rank's imported torch and DeepSpeed (it starts in milliseconds; a fresh
interpreter took ≈ 3.5 s of CPU to import them). It waits on a socket for the staging arena (a
memfd, handed over once the trainer knows how large a save is), then takes one job per file:
8 bytes of length, then a pickle whose tensor storages are references into the arena. It
rebuilds each file's objects over the arena (no copy), writes it as DeepSpeed's torch engine
would (temp file, fsync, rename), hashes it, and at the end of each checkpoint answers with one
JSON line: the files with size and sha256, or the first error (the failed file's temp is
removed; the rest of that checkpoint is skipped). A run that turns out synchronous
(`checkpoint.async: auto`) closes the socket and the writer exits having done nothing.

A separate process, not a thread: serialising and hashing gigabytes would hold the trainer's
GIL. It runs at nice +10, so that where CPUs are short the training loop goes first, and is
named `ckpt-writer` (ps, /proc/PID/comm). Signals that stop the trainer (SIGINT, SIGTERM,
SIGUSR1) are ignored here, because the trainer waits for the write in flight before it stops
and then says `quit`; a writer whose trainer dies goes with it (PR_SET_PDEATHSIG, and EOF on
the socket)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

import torch

HEADER = struct.Struct("<Q")
# The trainer's stop signals: the writer ignores them (the trainer waits for the write in
# flight, then says `quit`). They are blocked over the fork, so one that comes right then
# stays pending until the child has set them to be ignored, and is then dropped.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# Tests only: hold each file this long before writing it, so that a test can act while a
# background write is certainly in flight (kill a rank or the writer, and see what follows).
# Read when a file is written, not at import (a module imported once and forked keeps its own).
TEST_DELAY_ENV = "ARROWTRAIN_TEST_WRITER_DELAY_S"
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PROCESS_NAME = "ckpt-writer"  # its name in ps and /proc/PID/comm


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
        delay_s = float(os.environ.get(TEST_DELAY_ENV) or 0)
        if delay_s:
            time.sleep(delay_s)
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


def _die_with_parent(parent: int) -> bool:
    """Killed when the rank dies (PR_SET_PDEATHSIG); False if it is gone already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_NAME, PROCESS_NAME.encode())
    except (OSError, AttributeError):  # not Linux: EOF on the socket still ends the writer
        pass
    return os.getppid() == parent


def _serve(sock: socket.socket, parent: int) -> int:
    """The writer's life (in the forked child): ignore the stop signals, wait for the arena,
    then write each checkpoint's files as the jobs come."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked over the fork
    if not _die_with_parent(parent):
        return 0
    torch.set_num_threads(1)
    os.nice(10)  # background work: where CPUs are short, the training loop goes first
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not fds:
        return 0  # closed before an arena came: this run saves synchronously
    arena = ArenaView(fds[0])
    jobs, answers = sock.makefile("rb"), sock.makefile("w")
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


class Writer:
    """The rank's handle on its writer process (`fork_writer`): `attach` hands it the arena,
    `send` a job, `answer` the outcome of the checkpoint sent last, `close` ends it."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid, self.sock = pid, sock
        self.jobs, self.answers = sock.makefile("wb"), sock.makefile("r")
        self.returncode: int | None = None

    def attach(self, arena_fd: int) -> None:
        socket.send_fds(self.sock, [b"A"], [arena_fd])

    def send(self, message: dict[str, Any]) -> None:
        send_message(self.jobs, message)

    def answer(self) -> dict[str, Any]:
        """The writer's answer for the checkpoint sent last (blocks; the GIL is free)."""
        try:
            line = self.answers.readline()
        except OSError:  # reset: it died with jobs unread
            line = ""
        if line:
            return json.loads(line)
        code = self.wait()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return {"files": {}, "write_s": 0.0, "error": {
            "file": f"checkpoint writer process (pid {self.pid})", "disk_full": False,
            "writer_died": True,
            "error": f"it died ({how}) before the checkpoint's files were written"}}

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status, as subprocess's returncode (-N: signal N); TimeoutError after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise TimeoutError(f"checkpoint writer process (pid {self.pid}) still runs")
            else:
                time.sleep(0.01)
        return self.returncode

    def close(self, timeout: float = 60) -> None:
        """Say quit (after the write in flight), close the socket and reap it (idempotent)."""
        if self.sock is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.send({"op": "quit"})
        for f in (self.jobs, self.answers, self.sock):
            with contextlib.suppress(OSError):
                f.close()
        self.sock = None
        try:
            self.wait(timeout)
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


def fork_writer() -> Writer:
    """The rank's writer, forked now from the rank (call it early, before the process group
    and the model: the child then shares the imported torch and DeepSpeed for free, and no
    other thread of the rank holds a lock it could need). The stop signals are blocked over
    the fork (the mask is inherited) until the child ignores them: a Ctrl-C to the process
    group right then must not end it. The child never returns into the caller's code."""
    parent = os.getpid()
    mine, theirs = socket.socketpair()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the writer
            code = 1
            try:
                mine.close()
                code = _serve(theirs, parent)
            except BaseException:  # noqa: BLE001 - said on the rank's stderr, then gone
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)  # no atexit, no flush of the rank's buffers
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    theirs.close()
    return Writer(pid, mine)
