"""The GPUs `arrowtrain plan` knows by name: memory from the data sheets (sold as "80GB": 80 GiB
of HBM) and the dense bf16 peak the trainer computes MFU against (pretrain.model.flops), plus
the allowances a real device needs beyond the tensors the plan counts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pretrain.model.flops import PEAK_BF16_FLOPS

GiB = 2**30

# name -> (what it is, memory bytes, PEAK_BF16_FLOPS key)
GPUS = {"h100": ("NVIDIA H100 SXM 80GB", 80 * GiB, "H100"),
        "h200": ("NVIDIA H200 141GB", 141 * GiB, "H200"),
        "a100": ("NVIDIA A100 80GB", 80 * GiB, "A100"),
        "a100-40gb": ("NVIDIA A100 40GB", 40 * GiB, "A100")}
DEFAULT_GPU = "h100"

# Allowances on top of the allocated peak (assumptions, not measured here: no GPU was lent to
# this project's planning work): the caching allocator's fragmentation (reserved but not
# allocated) as a share of the peak, and the CUDA context + NCCL's own buffers, which torch's
# allocator never sees.
FRAGMENTATION = 0.10
RUNTIME_BYTES = 1 * GiB

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
          "mib": 2**20, "g": GiB, "gb": GiB, "gib": GiB, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'80GB', '80 GiB', '40g', '85899345920' -> bytes (GB = GiB = 2**30, as GPUs are sold)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 80GB, 40GiB, 24g)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Hardware:
    """Where the run would go."""

    gpus: int
    memory_bytes: int          # per GPU
    peak_flops: float          # dense bf16 FLOP/s per GPU
    name: str
    gpus_per_node: int | None = None

    @classmethod
    def named(cls, gpu: str = DEFAULT_GPU, gpus: int = 1, memory_bytes: int | None = None,
              peak_flops: float | None = None, gpus_per_node: int | None = None) -> Hardware:
        if gpu not in GPUS:
            raise ValueError(f"unknown GPU {gpu!r}: one of {', '.join(GPUS)} (or give "
                             "--peak-tflops and --gpu-memory)")
        what, memory, key = GPUS[gpu]
        return cls(gpus, memory_bytes or memory, peak_flops or PEAK_BF16_FLOPS[key], what,
                   gpus_per_node)

    def usable_bytes(self) -> int:
        return self.memory_bytes


def allowance(allocated: int) -> int:
    """Fragmentation and runtime bytes to add to an allocated peak."""
    return int(allocated * FRAGMENTATION) + RUNTIME_BYTES
