"""`init_from: FILE.safetensors`: start a run from exported weights.

FILE is what `arrowtrain export` or `arrowtrain import-hf` writes (the model config in its
metadata). A run config without a model section, or with `model: {from_init: true}` (other keys
in it go over the file's: dropout, ...), takes its architecture from the file
(pretrain/train/config.py `model_from_init`). The run starts from its weights with a fresh
optimizer and schedule at step 0; once the run has a checkpoint, a restart resumes from that and
init_from is ignored (logged). The pre-flight (`init_problems`, torch-free: safetensors' numpy
reader) refuses, before any rank starts, a file whose tensors do not fit the run's model —
naming the parameters — or whose model computes something else with the same shapes (norm,
activation, positions, ...), naming the model keys and the values that fit. Settings that only
matter while training (dropout, loss, init, max_seq_len under RoPE, ...) may differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.configlib import Problem
from pretrain.model.config import ModelConfig, saved_model_config
from pretrain.model.shapes import Shapes, parameter_shapes

# Keys that change what the same tensors compute: a difference is refused.
FUNCTION_KEYS = ("family", "norm", "norm_position", "norm_eps", "position", "rope_theta",
                 "relative_max_distance", "activation", "bias", "tie_embeddings",
                 "scale_embeddings")
KEYS = ("init_from",)
# muP's keys change what the tensors compute too (output and attention scales); mup_base_width
# and mup_base_head_dim only where either side is muP (standard ignores them).
MUP_KEYS = ("parametrization", "mup_base_width", "mup_base_head_dim")


def function_keys(a: ModelConfig, b: ModelConfig) -> tuple[str, ...]:
    mup = "mup" in (a.parametrization, b.parametrization)
    return FUNCTION_KEYS + (MUP_KEYS if mup else ())


class InitFileError(ValueError):
    pass


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors' names of floating tensors


def read_init_file(path: Path, label: str = "init_from ") -> tuple[ModelConfig, Shapes]:
    """(the file's model config, {tensor: shape}), tied weights under their first name, read
    from the header alone; InitFileError (the message starts with `label` and the path) on a
    file that is not a regular file (a FIFO or /dev/zero is refused at once), not safetensors,
    without a valid model_config, or holding a tensor that is not floating point."""
    from safetensors import safe_open

    from data_tools.atomic import special_file_kind

    kind = special_file_kind(path)
    if kind is not None:
        raise InitFileError(f"{label}{path} is {kind}, not a .safetensors file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118
            shapes = {k: tuple(v.get_shape()) for k, v in slices.items()}
            dtypes = {k: v.get_dtype() for k, v in slices.items()}
    except FileNotFoundError:
        raise InitFileError(f"{label}{path}: no such file") from None
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise InitFileError(f"{label}{path}: not a readable safetensors file ({e})") from None
    if "model_config" not in meta:
        raise InitFileError(f"{label}{path}: no model_config in its metadata (write it "
                            "with `arrowtrain export` or `arrowtrain import-hf`)")
    try:
        cfg = saved_model_config(json.loads(meta["model_config"]))
    except (ValueError, TypeError, AttributeError) as e:
        raise InitFileError(f"{label}{path}: its model_config is not valid: {e}") from None
    bad = [f"{k} ({t})" for k, t in dtypes.items() if t not in FLOAT_DTYPES]
    if bad:
        raise InitFileError(f"{label}{path}: weights must be floating point (F32/F16/BF16/F64); "
                            f"{len(bad)} tensor(s) are not: {', '.join(bad[:5])}")
    if "lm_head.weight" in shapes and "tok_emb.weight" not in shapes:
        shapes["tok_emb.weight"] = shapes.pop("lm_head.weight")  # safetensors kept the 2nd name
    return cfg, shapes


def init_vocab(path: Path) -> int | None:
    """The vocabulary of the file's model, or None if it cannot be read (reported elsewhere)."""
    try:
        return read_init_file(path)[0].vocab_size
    except InitFileError:
        return None


def init_problems(model: ModelConfig, path: Path) -> list[Problem]:
    """Everything that keeps the weights of `path` from starting a run of `model` (vocab_size
    set): model keys that compute differently, then parameters missing, extra or reshaped."""
    try:
        theirs, got = read_init_file(path)
    except InitFileError as e:
        return [Problem(str(e), KEYS)]
    differ = [k for k in function_keys(model, theirs) if getattr(model, k) != getattr(theirs, k)]
    if differ:
        fits = " ".join(f"model.{k}={_yaml_value(getattr(theirs, k))}" for k in differ)
        return [Problem(f"model.{k} is {getattr(model, k)!r} but init_from {path} was trained "
                        f"with {getattr(theirs, k)!r}: set {fits}, or drop the model section "
                        "(or write `model: {from_init: true}`) to take the file's whole "
                        "architecture", (f"model.{k}", *KEYS)) for k in differ]
    want = parameter_shapes(model)
    lines = [f"{n}: missing from the file (run: {list(s)})" for n, s in want.items()
             if n not in got]
    lines += [f"{n}: file {list(got[n])}, run {list(s)}" for n, s in want.items()
              if n in got and got[n] != s]
    lines += [f"{n}: in the file, not in the run's model" for n in got if n not in want]
    if not lines:
        return []
    more = f"\n  ... and {len(lines) - 12} more" if len(lines) > 12 else ""
    return [Problem(f"init_from {path} does not fit the run's model ({len(lines)} parameter(s)); "
                    "the model section must build the file's shapes:\n  "
                    + "\n  ".join(lines[:12]) + more, (*KEYS, "model"))]


def _yaml_value(value: Any) -> str:
    """A value as a `key=value` override writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def load_init_weights(model: Any, path: Path) -> None:
    """Copy the file's tensors into `model` (strict: every parameter, same shapes);
    InitFileError naming the tensors that hold NaN or infinite values."""
    import torch
    from safetensors.torch import load_model

    load_model(model, str(path), strict=True)
    with torch.no_grad():
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise InitFileError(f"init_from {path}: {len(bad)} tensor(s) hold NaN or infinite "
                            f"values ({', '.join(bad[:5])}): training from them is meaningless")
