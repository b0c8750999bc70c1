"""The one helper for distributed tests on CPU: N real processes, gloo, a free port, a timeout,
and one log file per rank whose lines are tagged with the rank.

The rank processes are forked from a warm interpreter that has already imported torch and
DeepSpeed (helpers/forkserver.py: about half of a tiny run's wall time is those imports); each is
still its own process running `python ARGS...`'s code. ARROWTRAIN_TEST_FORKSERVER=0 starts every
rank as a fresh `python` instead (same tests, slower)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pretrain.train.distenv import free_port

REPO = Path(__file__).resolve().parents[2]


def rank_env(rank: int, world_size: int, port: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", WANDB_MODE=env.get("WANDB_MODE", "offline"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    env.update(extra or {})
    return env


class ForkedProcess:
    """A process the fork server started: the part of subprocess.Popen the tests use."""

    def __init__(self, pid: int, args: list[str]):
        self.pid, self.args, self.returncode = pid, args, None
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkServer:
    """Client of helpers/forkserver.py: one server per test session, started on first use."""

    def __init__(self):
        from helpers import forkserver

        self.import_env = {k: os.environ.get(k) for k in forkserver.IMPORT_TIME_ENV}
        self.import_env["OMP_NUM_THREADS"] = "1"
        env = {k: v for k, v in os.environ.items() if k not in forkserver.IMPORT_TIME_ENV}
        env.update({k: v for k, v in self.import_env.items() if v is not None})
        self.proc = subprocess.Popen([sys.executable, forkserver.__file__], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = json.loads(self.proc.stdout.readline() or "{}")
        self.ready = bool(hello.get("ready"))
        self.lock = threading.Lock()
        self.next_id = 0
        self.started: dict[int, tuple[threading.Event, ForkedProcess]] = {}
        self.running: dict[int, ForkedProcess] = {}
        self.dead = False
        self.warned: set[str] = set()
        if not self.ready:
            self.close()
            return
        threading.Thread(target=self._read, daemon=True, name="forkserver").start()

    def fits(self, env: dict) -> bool:
        """The request's import-time settings are the server's (else start a plain process,
        with a warning: a setting that drifts silently makes every later rank a fresh
        interpreter, ~4 s of imports each)."""
        differ = {k: (v, env.get(k)) for k, v in self.import_env.items() if env.get(k) != v}
        if differ and repr(differ) not in self.warned:
            self.warned.add(repr(differ))
            warnings.warn(f"fork server not used: import-time variables differ (server, "
                          f"request): {differ}; starting a fresh interpreter", stacklevel=3)
        return self.ready and not self.dead and not differ

    def start(self, args: list[str], env: dict, cwd: Path, log: Path,
              stderr: Path | None = None, stdin: Path | None = None) -> ForkedProcess:
        event, proc = threading.Event(), ForkedProcess(0, args)
        with self.lock:
            self.next_id += 1
            rid = self.next_id
            self.started[rid] = (event, proc)
            msg = {"id": rid, "args": args, "env": env, "cwd": str(cwd), "stdout": str(log),
                   "stderr": stderr and str(stderr), "stdin": stdin and str(stdin)}
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        if not event.wait(60):
            raise AssertionError(f"the fork server did not start {args[:2]}")
        if proc.pid == 0:
            raise AssertionError("the fork server died")
        return proc

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.lock:
                if "id" in msg:
                    event, proc = self.started.pop(msg["id"])
                    proc.pid = msg["pid"]
                    self.running[proc.pid] = proc
                    event.set()
                else:
                    proc = self.running.pop(msg["pid"], None)
            if "id" not in msg and proc is not None:
                proc._exited(msg["code"])
        self.dead = True  # EOF: no more notices; nothing started through it can be waited for
        with self.lock:
            for event, _ in self.started.values():
                event.set()
            for proc in self.running.values():
                proc._exited(-signal.SIGKILL)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_server: ForkServer | None = None
_server_lock = threading.Lock()


def fork_server() -> ForkServer | None:
    global _server
    if os.environ.get("ARROWTRAIN_TEST_FORKSERVER", "1") == "0":
        return None
    with _server_lock:
        if _server is None:
            _server = ForkServer()
            atexit.register(_server.close)
    return _server


def start_process(args: list[str], env: dict, cwd: Path, log: Path,
                  stderr: Path | None = None, stdin: Path | None = None):
    """`python ARGS...` with stdout and stderr appended to `log` (stderr to its own file if
    given; stdin from a file or /dev/null), in a session of its own: forked by the fork server
    where it fits, else a plain subprocess."""
    server = fork_server()
    if server is not None and server.fits(env):
        return server.start(args, env, cwd, log, stderr, stdin)
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(log, "ab"))
        err = files.enter_context(open(stderr, "ab")) if stderr else subprocess.STDOUT
        inp = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
        return subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdin=inp,
                                stdout=out, stderr=err, start_new_session=True)


def run_python(args: list[str], *, env: dict | None = None, cwd: Path = REPO,
               input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS...` to its end, as `subprocess.run([sys.executable, *args],
    capture_output=True, text=True)` returns it — a process of its own running the real entry
    point, forked from the warm interpreter (torch and DeepSpeed imported: ~4 s less per command
    on 2 cores). OMP_NUM_THREADS is 1 and TORCHINDUCTOR_CACHE_DIR the suite's unless `env` says
    otherwise. For tests of what a command does; a test of what a fresh interpreter prints or
    imports at start (stdout holds the result alone, torch is not imported) runs
    `sys.executable` itself."""
    import tempfile

    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", "1")
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:  # a cache folder, pinned by tests/conftest.py
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.environ["TORCHINDUCTOR_CACHE_DIR"])
    with tempfile.TemporaryDirectory(prefix="run_python") as tmp:
        out, err, inp = Path(tmp, "out"), Path(tmp, "err"), None
        if input is not None:
            inp = Path(tmp, "in")
            inp.write_text(input)
        proc = start_process(list(args), env, cwd, out, stderr=err, stdin=inp)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            raise
        return subprocess.CompletedProcess([sys.executable, *args], code, _text(out), _text(err))


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Ranks:
    """Running ranks; `wait()` collects them, `logs()` returns rank-tagged output."""

    procs: list
    log_paths: list[Path]

    def wait(self, timeout: float = 300) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"ranks timed out after {timeout}s\n{self.logs()}") from None
        return codes

    def wait_for(self, cond, what: str, timeout: float = 300, poll_s: float = 0.005) -> None:
        """Poll `cond()` until true; fail (with the logs) if a rank exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not cond():
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"a rank exited before {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout} s\n{self.logs()}")
            time.sleep(poll_s)

    def signal_groups_when(self, cond, what: str, sig: int, timeout: float = 240) -> list[int]:
        """Wait for `cond()`, send `sig` to each rank's process group (each rank leads its own,
        its helpers in it: as a terminal's Ctrl-C or a scheduler does), and return the ranks'
        exit codes; whatever still runs at the end is killed."""
        try:
            self.wait_for(cond, what)
            for p in self.procs:
                os.killpg(p.pid, sig)
            return self.wait(timeout)
        finally:
            self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def logs(self, tail: int = 60) -> str:
        out = []
        for r, path in enumerate(self.log_paths):
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            out += [f"[rank {r}] {line}" for line in lines[-tail:]]
        return "\n".join(out)


def start_ranks(args: list[str], log_dir: Path, world_size: int = 2,
                env: dict | None = None, cwd: Path | None = None) -> Ranks:
    """Start `python ARGS...` once per rank with the torch.distributed variables set."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, paths = [], []
    for rank in range(world_size):
        path = log_dir / f"rank{rank}.log"
        procs.append(start_process(list(args), rank_env(rank, world_size, port, env),
                                   cwd or REPO, path))
        paths.append(path)
    return Ranks(procs, paths)


def run_ranks(args: list[str], log_dir: Path, world_size: int = 2, env: dict | None = None,
              timeout: float = 300, expect: int | None = 0) -> Ranks:
    """Run to completion; assert every rank exits with `expect` (None: don't check)."""
    ranks = start_ranks(args, log_dir, world_size, env)
    codes = ranks.wait(timeout)
    if expect is not None and any(c != expect for c in codes):
        raise AssertionError(f"exit codes {codes}, expected {expect}\n{ranks.logs()}")
    return ranks
