"""No checkpoint file is ever unpickled with arbitrary globals — DeepSpeed's own loads included.

DeepSpeed 0.19 loads its model/optimizer files and `zero_to_fp32` loads the ZeRO partitions with
`torch.load(..., weights_only=False)`: a `.pt` file replaced by a pickle whose `__reduce__` names
`os.system` would run a command. Inside `weights_only_loading()` every `torch.load` in the
process runs with `weights_only=True` (torch's `TORCH_FORCE_WEIGHTS_ONLY_LOAD`, which overrides
an explicit `weights_only=False`, plus a wrapper that names the refused file), with exactly the
non-tensor types DeepSpeed stores allowed (`DEEPSPEED_GLOBALS`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pretrain.train.distenv import import_deepspeed

FORCE_VAR, NO_FORCE_VAR = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


class UnsafeCheckpointFile(RuntimeError):
    """A checkpoint file holds a pickle that weights-only loading refuses."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"refused to load {path}: {reason}")


def deepspeed_globals() -> list[type]:
    """The only non-tensor classes in DeepSpeed 0.19's checkpoints, found by saving real ZeRO
    0/1/2/3 x fp32/bf16 checkpoints and listing their pickles' globals (tests check the list):
    the static/dynamic loss scaler (state only: scale, counters), the ZeRO stage enum and the
    (numel, start) dataclass of a parameter fragment. DynamicLossScaler is fp16's, which needs a
    GPU; it is the same plain-state class as LossScaler."""
    import_deepspeed()
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def refusal_reason(err: BaseException) -> str:
    """torch's weights-only error, cut to what the file holds (torch's text advises loading
    with weights_only=False, which is exactly what must not happen)."""
    text = str(err)
    if m := re.search(r"GLOBAL (\S+)", text):
        return (f"it holds a pickled reference to `{m.group(1)}`, which weights-only loading "
                "refuses (DeepSpeed and arrowtrain write only tensors and plain data: this file "
                "was replaced or tampered with)")
    if m := re.search(r"(Unsupported operand \d+|Unsupported class \S+)", text):
        return (f"its pickle uses what weights-only loading refuses ({m.group(1)}): this file "
                "was replaced or tampered with")
    return f"weights-only loading refused it ({text.strip().splitlines()[-1][:200]})"


_lock = threading.RLock()
_depth = 0
_active: contextlib.ExitStack | None = None


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force weights_only=True on every torch.load in the process while inside; a refusal
    raises UnsafeCheckpointFile naming the file. Re-entrant (the outermost exit restores)."""
    global _depth, _active
    with _lock:
        _depth += 1
        if _depth == 1:
            stack = contextlib.ExitStack()
            stack.enter_context(_forced_env())
            stack.enter_context(torch.serialization.safe_globals(deepspeed_globals()))
            original = torch.load
            torch.load = _guarded(original)
            stack.callback(setattr, torch, "load", original)
            _active = stack
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _active.close()
                _active = None


@contextlib.contextmanager
def _forced_env() -> Iterator[None]:
    saved = {v: os.environ.get(v) for v in (FORCE_VAR, NO_FORCE_VAR)}
    os.environ[FORCE_VAR] = "1"
    os.environ.pop(NO_FORCE_VAR, None)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _guarded(original):
    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None,
             **kwargs: Any):
        # pickle_module and weights_only are dropped on purpose: weights-only, always.
        try:
            return original(f, map_location=map_location, weights_only=True, mmap=mmap,
                            **kwargs)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointFile(f if isinstance(f, (str, Path)) else "<stream>",
                                       refusal_reason(e)) from None

    load.__wrapped__ = original
    return load


def probe(path: Path) -> None:
    """Unpickle `path` weights-only without reading its tensor data (mmap): raises
    UnsafeCheckpointFile if the pickle refers to anything but tensors, plain data and
    DeepSpeed's few classes. Every file torch.save writes is a zip archive."""
    if not zipfile.is_zipfile(path):
        raise UnsafeCheckpointFile(path, "it is not a torch.save archive (a bare pickle?): "
                                   "this file was replaced or tampered with")
    with weights_only_loading():
        torch.load(path, map_location="cpu", mmap=True, weights_only=True)
