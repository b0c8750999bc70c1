"""What every benchmark prints beside its figures: the machine it ran on. A benchmark script
puts the repository on sys.path first (it runs as `python benchmarks/NAME.py`), then imports
this module as `benchmarks.common`. Torch is imported only by `device_name`."""

from __future__ import annotations

from pathlib import Path

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
