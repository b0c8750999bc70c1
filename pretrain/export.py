"""python -m pretrain.export RUNDIR --out model.safetensors [--tag step_00001000]

Consolidates a run's checkpoint (any ZeRO stage) into one fp32 safetensors file that
`build_model` + `safetensors.torch.load_model` read back. The model config travels in the file's
metadata (key `model_config`, JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from torch import nn

from pretrain.logs import setup_logging
from pretrain.model import build_model, saved_model_config
from pretrain.train import checkpoint as ckpt

log = logging.getLogger("pretrain.export")


class ExportError(RuntimeError):
    pass


def checkpoint_dir(run_dir: Path, tag: str | None = None) -> tuple[Path, dict]:
    """(tag folder, meta) of `tag`, or of the newest complete checkpoint."""
    ckpt_root = run_dir / "checkpoints"
    tag = tag or ckpt.find_resume_tag(ckpt_root)
    if tag is None:
        raise ExportError(f"no complete checkpoint in {ckpt_root}")
    tag_dir = ckpt_root / tag
    meta = ckpt.read_meta(tag_dir)
    if meta is None or not ckpt.is_complete(tag_dir):
        raise ExportError(f"checkpoint {tag_dir} is missing or incomplete")
    return tag_dir, meta


def _fp32_state_dict(tag_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    if zero_stage == 0:  # the full model is in rank 0's model-states file
        path = tag_dir / "mp_rank_00_model_states.pt"
        states = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # merging runs on the CPU in any case
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # Merges the fp32 master partitions of every rank (ZeRO 1-3).
    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def load_trained_model(run_dir: str | Path, tag: str | None = None) -> tuple[nn.Module, dict]:
    """The model of a run's checkpoint, on CPU in fp32, and the checkpoint's meta."""
    tag_dir, meta = checkpoint_dir(Path(run_dir), tag)
    cfg = saved_model_config(meta["config"]["model"])
    model = build_model(cfg)
    state = _fp32_state_dict(tag_dir, meta["config"]["deepspeed"]["zero_stage"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights may be stored once; anything else missing is an error.
    tied = {n for n in missing if _is_tied(model, n)}
    if set(missing) - tied or unexpected:
        raise ExportError(f"checkpoint {tag_dir} does not match the model: missing "
                          f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    return model.eval(), meta


def _is_tied(model: nn.Module, name: str) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = dict(model.named_parameters())
    return name in params and name not in unique


def export(run_dir: str | Path, out: str | Path, tag: str | None = None) -> Path:
    from safetensors.torch import save_model

    model, meta = load_trained_model(run_dir, tag)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out), metadata={
        "model_config": json.dumps(meta["config"]["model"]), "step": str(meta["step"]),
        "data_fingerprint": meta["data_fingerprint"]})
    return out


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild the model a safetensors export describes and load its weights (strict)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    with safe_open(str(path), framework="pt") as f:
        cfg = saved_model_config(json.loads(f.metadata()["model_config"]))
    model = build_model(cfg)
    load_model(model, str(path), strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    p.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        out = export(args.run_dir, args.out, args.tag)
    except ExportError as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
