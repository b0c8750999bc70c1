"""The one helper for distributed tests on CPU: N real processes, gloo, a free port, a timeout,
and one log file per rank whose lines are tagged with the rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


@dataclass
class Ranks:
    """Running ranks; `wait()` collects them, `logs()` returns rank-tagged output."""

    procs: list[subprocess.Popen]
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
        fh = open(path, "ab")  # noqa: SIM115 - owned by the child
        procs.append(subprocess.Popen(
            [sys.executable, *args], env=rank_env(rank, world_size, port, env),
            cwd=cwd or REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        ))
        fh.close()
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
