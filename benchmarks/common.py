"""What every benchmark prints beside its figures: the machine it ran on. A benchmark script
puts the repository on sys.path first (it runs as `python benchmarks/NAME.py`), then imports
this module as `benchmarks.common`. Torch is imported only by `device_name`."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(key: str) -> str | None:
    """The first `key : value` line of /proc/cpuinfo (None off Linux or without the key)."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """'AMD EPYC 7B13', or 'unknown CPU'."""
    return _cpuinfo("model name") or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (sha_ni, avx512f, ...); empty when unknown."""
    return set((_cpuinfo("flags") or "").split())


def device_name(device) -> str:
    """The GPU's name for a CUDA `torch.device`, else the CPU model and torch's thread count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} (CPU, {torch.get_num_threads()} threads)"


def end_rank(code: int = 0) -> NoReturn:
    """End a rank process the way the trainer does (pretrain/train/__main__.exit_now): flush,
    then `os._exit`, without the interpreter's teardown. There, a gloo worker thread still
    releasing the last asynchronous all-reduce's tensors needs the GIL and aborts the process
    ("terminate called without an active exception", exit 250: ~1 run in 10 of
    plan_memory.py's 2 ranks on a 2-core box), after every figure was printed."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
