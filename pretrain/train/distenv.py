"""Rank variables, a free port and the one way to import DeepSpeed. Importing this module costs
no torch: the trainer, the launchers and the tests use the same functions (the launchers must
start fast, before any rank imports torch)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int


PORT_RANGE_ENV = "ARROWTRAIN_PORT_RANGE"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: the OS picks it, or, when
    ARROWTRAIN_PORT_RANGE=LOW-HIGH is set, the first free one from a random place in that range
    (where only a range is open; the test suite gives each worker its own range below the
    kernel's ephemeral ports, which no outgoing connection can then take meanwhile)."""
    span = os.environ.get(PORT_RANGE_ENV)
    if not span:
        return _bind_free(0)
    low, high = _port_range(span)
    start = random.randrange(low, high + 1)
    for port in (*range(start, high + 1), *range(low, start)):
        with contextlib.suppress(OSError):
            return _bind_free(port)
    raise OSError(f"{PORT_RANGE_ENV}={span}: no free port in that range on 127.0.0.1")


def _bind_free(port: int) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]


def _port_range(span: str) -> tuple[int, int]:
    low, sep, high = span.partition("-")
    if sep and low.strip().isdigit() and high.strip().isdigit() \
            and 1024 <= int(low) <= int(high) <= 65535:
        return int(low), int(high)
    raise ValueError(f"{PORT_RANGE_ENV}={span!r}: expected LOW-HIGH, 1024 <= LOW <= HIGH <= 65535")


def resolve_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Rank variables from torchrun/deepspeed (RANK...), srun (SLURM_PROCID...) or none
    (one process: world size 1 on a free local port). Fills in os.environ for torch."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    if "RANK" not in env:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        if int(env["WORLD_SIZE"]) > 1:
            raise RuntimeError("MASTER_PORT is not set for a multi-process run")
        env["MASTER_PORT"] = str(free_port())
    return DistEnv(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]))


def import_deepspeed() -> ModuleType:
    """`import deepspeed`, with DeepSpeed's log lines on stderr. Its logger writes to whatever
    stdout is when DeepSpeed is first imported, and a command's result on stdout (translate,
    sample, export, ...) must be the result alone. Without a CUDA GPU the accelerator is named
    up front (DS_ACCELERATOR=cpu, unless set), so DeepSpeed does not guess it and warn
    "Setting accelerator to CPU" at all. Every module that uses DeepSpeed imports it here
    first; `from deepspeed... import` after that call is the same, quiet module."""
    if "deepspeed" not in sys.modules:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed
        from pretrain.logs import deepspeed_level, set_deepspeed_level

        set_deepspeed_level(logging.getLevelName(deepspeed_level()).lower())  # import reset it
        _import_muon_compiling_on_first_call()
    import deepspeed

    return deepspeed


MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def _import_muon_compiling_on_first_call() -> None:
    """DeepSpeed imports its Muon optimizer's module at every ZeRO engine start (the optimizer
    check) and in ZeRO-1/2's gradient reduction, and that module wraps its update functions in
    `torch.compile` as it is imported; building those wrappers imports inductor: ~0.9 s of CPU
    per rank start, for functions that only a Muon optimizer calls (measured on a 2-core Xeon:
    a fresh process's imports + ZeRO-1 engine start + one step 3.3 -> 2.4 s of CPU). Imported
    here first, each wrapper built on its first call instead (the same compiled function, only
    later); `torch.compile` itself is restored before this returns."""
    if MUON_MODULE in sys.modules:
        return
    import importlib

    import torch

    real = torch.compile
    torch.compile = compile_on_first_call(real)
    try:
        importlib.import_module(MUON_MODULE)
    except ImportError:  # a DeepSpeed without Muon: nothing to defer
        pass
    finally:
        torch.compile = real


def compile_on_first_call(compile_fn):
    """`compile_fn` (torch.compile's signature: `compile_fn(fn, **kw)` or `compile_fn(**kw)` as
    a decorator) that calls `compile_fn(fn, **kw)` when the function is first called, not when
    it is wrapped."""
    import functools

    def deferred(model=None, **kwargs):
        if model is None:
            return lambda fn: deferred(fn, **kwargs)
        compiled = []

        @functools.wraps(model)
        def call(*args, **kw):
            if not compiled:
                compiled.append(compile_fn(model, **kwargs))
            return compiled[0](*args, **kw)

        return call

    return deferred


@contextlib.contextmanager
def deepspeed_output() -> Iterator[None]:
    """Around DeepSpeed's checkpoint tools (ds_to_universal, zero_to_fp32), which print their
    steps and tqdm bars: on stderr when DeepSpeed's INFO is asked for
    (pretrain.logs.set_deepspeed_level), else kept out of the log — and shown after all if the
    tool fails. stdout stays the command's own in either case."""
    from pretrain.logs import deepspeed_level

    if deepspeed_level() <= logging.INFO:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        tail = captured.getvalue()[-4000:]
        if tail.strip():
            sys.stderr.write(f"DeepSpeed's output before the failure:\n{tail}\n")
        raise
