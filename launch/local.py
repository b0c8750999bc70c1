"""`python -m launch local`: N trainer ranks on this machine, started by us (no torchrun, no
deepspeed launcher), with rank-prefixed output and signals forwarded to every rank."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from launch.common import TRAIN_MODULE, combine_exit_codes, default_omp_threads, train_env
from launch.common import print_config as _print_config
from pretrain.exit_codes import EXIT_OK, describe_exit
from pretrain.train.distenv import free_port
from pretrain.train.progress import TTY_VAR
from pretrain.train.signals import SAME_REQUEST_S, Repeats

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
FAILED_RANK_GRACE_S = 30.0  # after one rank fails, the others get this long to notice


GPU_DEVICE_GLOBS = ("/dev/nvidia[0-9]*", "/dev/kfd")  # NVIDIA GPUs, AMD ROCm


def default_nproc() -> int:
    """All GPUs; one CPU rank when there are none. Torch counts them, but only where a GPU
    driver's device files exist: a CPU machine starts the launcher without importing torch."""
    if not any(Path("/").glob(g.lstrip("/")) for g in GPU_DEVICE_GLOBS):
        return 1
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch / broken driver: one CPU rank
        return 1


def _pump(rank: int, stream, out) -> None:
    """Copy a rank's output, each line prefixed with its rank. A carriage return (a progress
    bar redrawing itself) ends a piece too, so bars keep redrawing in place."""
    prefix = f"[rank {rank}] ".encode()
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        pieces = re.split(rb"(?<=[\r\n])", pending + chunk)
        pending = pieces.pop()  # no terminator yet
        out.write(b"".join(p if p == b"\r" else prefix + p for p in pieces if p))
        out.flush()
    if pending:
        out.write(prefix + pending + b"\n")
        out.flush()
    stream.close()


@dataclass
class RankGroup:
    """The running ranks of one node and the signal forwarding around them. The same signal
    again within SAME_REQUEST_S is the same request (`timeout` relays the Ctrl-C the terminal
    also sent us): only a Ctrl-C after that kills the ranks."""

    procs: list[subprocess.Popen]
    pumps: list[threading.Thread] = field(default_factory=list)
    interrupts: int = 0
    repeats: Repeats = field(default_factory=Repeats)

    def send(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    def on_signal(self, signum, _frame) -> None:
        if self.repeats.is_repeat(signum):
            return  # the same request, relayed by a wrapper (or a key held down)
        if signum == signal.SIGINT:
            # First Ctrl-C: graceful stop (save + exit 75). A later one: kill.
            self.interrupts += 1
            if self.interrupts == 1:
                print("[launch] Ctrl-C: sending SIGTERM to the ranks: they save a checkpoint "
                      "at their next sync step and exit 75 (each rank says when); Ctrl-C again "
                      f"(more than {SAME_REQUEST_S:.0f} s from now) kills them without saving",
                      file=sys.stderr, flush=True)
                self.send(signal.SIGTERM)
            else:
                print("[launch] Ctrl-C again: sending SIGKILL to the ranks (no checkpoint is "
                      "saved; the last one is kept)", file=sys.stderr, flush=True)
                self.send(signal.SIGKILL)
        else:
            print(f"[launch] forwarding {signal.Signals(signum).name} to the ranks",
                  file=sys.stderr, flush=True)
            self.send(signum)

    def install_handlers(self) -> None:
        for sig in (signal.SIGINT, *FORWARDED):
            signal.signal(sig, self.on_signal)

    def wait(self) -> list[int]:
        """Wait for every rank; if one fails, give the rest a grace period, then kill them."""
        failed_at = None
        while any(p.poll() is None for p in self.procs):
            codes = [p.poll() for p in self.procs]
            if failed_at is None and any(c not in (None, 0, 75) for c in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILED_RANK_GRACE_S:
                print("[launch] a rank failed; killing the others", file=sys.stderr, flush=True)
                self.send(signal.SIGKILL)
            time.sleep(0.2)
        for t in self.pumps:
            t.join(timeout=5)
        return [p.returncode for p in self.procs]


def rank_commands(cmd_args: list[str], nproc: int, omp_threads: int,
                  master_port: int) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of every rank: `python -m pretrain.train ARGS` with the
    torch.distributed variables, OMP_NUM_THREADS and the repo on PYTHONPATH."""
    return [([sys.executable, "-m", TRAIN_MODULE, *cmd_args],
             train_env(omp_threads=omp_threads, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=nproc,
                       LOCAL_WORLD_SIZE=nproc, MASTER_ADDR="127.0.0.1", MASTER_PORT=master_port))
            for rank in range(nproc)]


def print_commands(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    """--dry-run: one copy-pasteable shell line per rank, with the variables that differ from
    this shell's environment."""
    print(f"# in {shlex.quote(str(Path.cwd()))}; MASTER_PORT was free just now (a free one is "
          "picked again at start)")
    for argv, env in commands:
        changed = [f"{k}={v}" for k, v in env.items() if os.environ.get(k) != v]
        print(shlex.join(["env", *changed, *argv]))


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def start_ranks(cmd_args: list[str], nproc: int, omp_threads: int, master_port: int,
                out=None) -> RankGroup:
    """Start `python -m pretrain.train ARGS` once per rank with the five torch.distributed
    variables and OMP_NUM_THREADS set; each rank's output goes to `out` prefixed."""
    out = out or sys.stdout.buffer
    tty = {TTY_VAR: "1" if _isatty(out) else "0"}  # the ranks see a pipe: we know better
    procs, pumps = [], []
    for rank, (argv, env) in enumerate(rank_commands(cmd_args, nproc, omp_threads,
                                                     master_port)):
        env = {**tty, **env}  # the caller's ARROWTRAIN_TTY wins
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # signals reach ranks only through us
        t = threading.Thread(target=_pump, args=(rank, p.stdout, out), daemon=True)
        t.start()
        procs.append(p)
        pumps.append(t)
    return RankGroup(procs, pumps)


def run_local(config: str, overrides: list[str], nproc: int | None = None,
              omp_threads: int | None = None, print_config: bool = False,
              dry_run: bool = False) -> int:
    """Validate, start, wait; returns the combined exit code (0, 75 or the first failure).
    `print_config` / `dry_run`: validate, print the config / the rank commands, start nothing."""
    from launch.common import validate_or_exit

    nproc = nproc or default_nproc()
    cfg = validate_or_exit(config, overrides, world_size=nproc, ranks_per_node=nproc)
    if print_config:
        return _print_config(cfg)
    omp_threads = omp_threads or default_omp_threads(nproc)
    port = free_port()
    if dry_run:
        print_commands(rank_commands(["--config", config, *overrides], nproc, omp_threads, port))
        return EXIT_OK
    print(f"[launch] {nproc} rank(s) on 127.0.0.1:{port}, OMP_NUM_THREADS={omp_threads}, "
          f"run folder {cfg.run_dir}", file=sys.stderr, flush=True)
    group = start_ranks(["--config", config, *overrides], nproc, omp_threads, port)
    group.install_handlers()
    codes = group.wait()
    code = combine_exit_codes(codes)
    print(f"[launch] rank exit codes {codes} -> {code} ({describe_exit(code)})",
          file=sys.stderr, flush=True)
    return code
