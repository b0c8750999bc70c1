"""Rank processes forked from a warm interpreter, for the distributed tests (helpers/dist.py).

A trainer rank spends most of a tiny test run importing: torch, DeepSpeed, torch._dynamo (which
torch's optimizers import on construction) and inductor (which DeepSpeed's ZeRO checks import),
~4 s of CPU per rank and launch on a 2-core box. This server imports those third-party modules
once, and this repository's `pretrain` modules that do not import pyarrow (no module of it
reads the environment at import time: tests/helpers/test_dist.py checks), then forks one child
per rank on request. Each child is a
real, separate process running the real entry point — `python -m pretrain.train ...`, a `-c`
script, a script file — with its own environment, working directory, session and log file, and
exits through the same paths (the trainer's `os._exit`, SystemExit, a traceback and 1). Only the
import of those modules is shared.

Fork safety: the server forks only while it is single-threaded (checked once after the imports:
none of these modules starts a thread; pyarrow, whose allocator does, is left to the children),
imports only, never runs a torch op, and never touches CUDA. Environment variables those modules
read at import time (OMP_NUM_THREADS, DS_ACCELERATOR, ...) are the server's; a request that sets
them differently is refused, and the caller starts a plain process instead.

Protocol (JSON lines): the client writes {"id", "args", "env", "cwd", "stdout"} (optional:
"stderr", else it goes to stdout's file; "stdin", else /dev/null) to stdin; the server
answers {"ready", "threads"} once, {"id", "pid"} per request, and {"pid", "code"} when a child
ends (code as subprocess.Popen.returncode: -N for signal N). EOF on stdin: the server kills the
children still running and exits.

Run as a script: `python tests/helpers/forkserver.py` (stdlib imports only at module level).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.abc
import json
import os
import select
import signal
import sys

PRELOAD = ("torch", "torch._dynamo", "deepspeed", "deepspeed.runtime.engine",
           "deepspeed.runtime.zero.muon.muon_optimizer",
           # what a trainer rank imports later, lazily (DeepSpeed's engine start, the config
           # loader): ~150 more modules, ~0.07 s of CPU in every forked rank otherwise. Not
           # pyarrow: its import starts jemalloc's background thread.
           "deepspeed.module_inject.auto_ep_layer", "deepspeed.module_inject.auto_ep_config",
           "deepspeed.moe.ep_experts", "deepspeed.moe.ep_router", "deepspeed.moe.ep_repack",
           "deepspeed.ops.op_builder.all_ops", "deepspeed.runtime.python_gc",
           "deepspeed.comm.mori", "torch.utils.serialization", "setuptools",
           "distutils.ccompiler", "numpy.ma", "yaml", "pydantic.type_adapter",
           "email.headerregistry")
# Read by the preloaded modules (or the libraries they load) at import time.
IMPORT_TIME_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES",
                   "PYTORCH_JIT", "TORCH_LOGS", "TORCHDYNAMO_DISABLE", "TORCHINDUCTOR_CACHE_DIR")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: no way to check, so never fork
        return -1


def _run(args: list[str]) -> None:
    """What `python ARGS...` runs, in this (forked) interpreter."""
    import runpy
    import types

    if args[0] == "-m":
        sys.path.insert(0, os.getcwd())
        sys.argv = [args[1], *args[2:]]  # runpy puts the module's file in argv[0]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c":
        sys.path.insert(0, "")
        sys.argv = ["-c", *args[2:]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(args[1], "<string>", "exec"), main.__dict__)  # noqa: S102
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")


def _redirect(fd: int, path: str, flags: int) -> None:
    opened = os.open(path, flags, 0o644)
    if opened != fd:  # the lowest free descriptor: fd itself when it was closed
        os.dup2(opened, fd)
        os.close(opened)


def _child(req: dict, base_path: list[str], close: list[int]) -> None:
    """In the forked child: become the requested process, run it, never return."""
    code = 1
    try:
        os.setsid()
        for fd in close:
            os.close(fd)
        _redirect(0, req.get("stdin") or os.devnull, os.O_RDONLY)
        _redirect(1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        _redirect(2, req.get("stderr") or req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [*extra, *base_path]
        _run(req["args"])
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream: nothing left to write
                stream.flush()
        os._exit(code)


class _RefusePyarrow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"{name}: not preloaded")
        return None


def _preload_project() -> None:
    """This repository's `pretrain` modules (its configs' pydantic models, the model, the engine
    set-up: ~0.1 s of CPU in every forked rank otherwise), except those that import pyarrow (its
    import starts jemalloc's background thread, and the server forks only single-threaded):
    the children import those themselves. No module reads the environment at import time (the
    children's differs from the server's)."""
    import pkgutil

    import pretrain

    refuse = _RefusePyarrow()
    sys.meta_path.insert(0, refuse)
    try:
        for info in pkgutil.walk_packages(pretrain.__path__, "pretrain."):
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)
    finally:
        sys.meta_path.remove(refuse)


def _probe_deepspeed_ops() -> None:
    """DeepSpeed probes which of its ops this machine can build (compiler subprocesses) on the
    first read of `deepspeed.ops.__compatible_ops__`, which every CPU rank makes at its start
    (pretrain.train.engine.init_distributed): ~60 ms of CPU per rank, done once here instead.
    The answer depends on the machine and on DS_ACCELERATOR (an import-time variable above);
    CPU only, so the server never touches CUDA."""
    if os.environ.get("DS_ACCELERATOR") != "cpu":
        return
    try:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__  # noqa: B018 - the read runs and caches the probe
    except Exception as e:  # noqa: BLE001 - each child probes again and fails loudly
        print(f"forkserver: probing DeepSpeed's ops failed: {e}", file=sys.stderr)


def serve() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed while importing goes to stderr, never into the protocol
    base_path = sys.path[1:]  # without this script's folder
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the children import it again and fail loudly
            print(f"forkserver: preloading {name} failed: {e}", file=sys.stderr)
    _preload_project()
    _probe_deepspeed_ops()
    # The preloaded heap (~320k objects) out of the cyclic GC's reach, as Python's docs advise
    # before forking: a child's full collection (DeepSpeed runs one at engine start) would
    # otherwise write to every inherited object's GC header and copy the whole heap page by
    # page (copy-on-write), seconds of CPU per rank on a 2-core box.
    gc.freeze()
    threads = _threads()
    out.write(json.dumps({"ready": threads == 1, "threads": threads}) + "\n")
    if threads != 1:
        return
    children: set[int] = set()
    buf = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.01)
        if ready:
            data = os.read(0, 1 << 16)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(req, base_path, [0, out.fileno()])
                children.add(pid)
                out.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            out.write(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
    for pid in children:  # the client is gone: leave nothing running
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            continue


if __name__ == "__main__":
    serve()
