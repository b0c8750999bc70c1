"""python -m pretrain.export RUNDIR --out model.safetensors [--tag step_00001000]
python -m pretrain.export RUNDIR --format universal [--tag step_00001000]

Consolidates a run's checkpoint (any ZeRO stage) into one fp32 safetensors file that
`build_model` + `safetensors.torch.load_model` read back. The model config travels in the file's
metadata (key `model_config`, JSON).

--format universal re-shards a ZeRO 1-3 checkpoint offline into DeepSpeed's universal checkpoint
beside it (checkpoints/TAG_universal, pretrain/train/reshard.py): what a resume on another
number of ranks or another ZeRO stage loads (the trainer converts by itself when needed; this is
for moving runs between clusters)."""

from __future__ import annotations

import argparse
import contextlib
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
from pretrain.train.safeload import UnsafeCheckpointFile, weights_only_loading

log = logging.getLogger("pretrain.export")


class ExportError(RuntimeError):
    pass


def checkpoint_dir(run_dir: Path, tag: str | None = None) -> tuple[Path, ckpt.CheckpointMeta]:
    """(tag folder, meta) of `tag`, or of the newest complete checkpoint, after checking every
    file against meta.json (size, sha256) and unpickling it weights-only. Without `tag` a
    damaged checkpoint is skipped for the previous one, with a warning naming the file."""
    ckpt_root = run_dir / "checkpoints"
    if tag is not None and not (ckpt_root / tag).is_dir():
        raise ExportError(f"no checkpoint {ckpt_root / tag}")
    candidates = [tag] if tag is not None else ckpt.resume_candidates(ckpt_root)
    if not candidates:
        raise ExportError(f"no checkpoint in {ckpt_root}")
    try:
        found = ckpt.choose_checkpoint(ckpt_root, candidates,
                                       none_left="nothing: no undamaged checkpoint is left")
    except ckpt.CheckpointError as e:
        raise ExportError(str(e)) from None
    if found is None:
        raise ExportError(f"no complete, undamaged checkpoint in {ckpt_root} (see the warnings "
                          "above)" if tag is None else f"checkpoint {ckpt_root / tag} is "
                          "incomplete or damaged (see the warning above)")
    return ckpt_root / found[0], found[1]


def _fp32_state_dict(tag_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    try:  # every torch.load weights-only, zero_to_fp32's own included
        with weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
            return _merge(tag_dir, zero_stage)
    except UnsafeCheckpointFile as e:
        raise ExportError(str(e)) from None


def _merge(tag_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    if zero_stage == 0:  # the full model is in rank 0's model-states file
        path = tag_dir / "mp_rank_00_model_states.pt"
        states = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # merging runs on the CPU in any case
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # Merges the fp32 master partitions of every rank (ZeRO 1-3); prints progress (to stderr).
    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def load_trained_model(run_dir: str | Path, tag: str | None = None,
                       ) -> tuple[nn.Module, ckpt.CheckpointMeta]:
    """The model of a run's checkpoint, on CPU in fp32, and the checkpoint's meta."""
    tag_dir, meta = checkpoint_dir(Path(run_dir), tag)
    cfg = saved_model_config(meta.config["model"])
    model = build_model(cfg)
    state = _fp32_state_dict(tag_dir, meta.zero_stage)
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
        "model_config": json.dumps(meta.config["model"]), "step": str(meta.step),
        "data_fingerprint": meta.data_fingerprint})
    return out


def export_universal(run_dir: str | Path, tag: str | None = None) -> Path:
    """checkpoints/TAG_universal beside the checkpoint, converted once (reused when present)."""
    from pretrain.train import reshard

    tag_dir, meta = checkpoint_dir(Path(run_dir), tag)
    if meta.converted_from is not None:
        raise ExportError(f"{tag_dir} is already a universal checkpoint")
    if meta.zero_stage == 0:
        raise ExportError(f"{tag_dir} is a ZeRO-0 checkpoint: it resumes on any number of ranks "
                          "as it is (ZeRO-0 to ZeRO 1-3 is not supported by the universal format)")
    try:
        return reshard.convert(tag_dir.parent, tag_dir.name, meta)
    except ckpt.CheckpointError as e:
        raise ExportError(str(e)) from None


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
    p.add_argument("--out", type=Path, help="output .safetensors file (not with universal)")
    p.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    p.add_argument("--format", choices=("safetensors", "universal"), default="safetensors",
                   help="safetensors (default): one fp32 file; universal: DeepSpeed's universal "
                   "checkpoint written beside the checkpoint, for a resume on any number of ranks")
    args = p.parse_args(argv)
    if (args.format == "universal") == (args.out is not None):
        p.error("--out is required" if args.out is None else
                "--format universal writes checkpoints/TAG_universal beside the checkpoint; "
                "drop --out")
    setup_logging()
    try:
        out = (export_universal(args.run_dir, args.tag) if args.format == "universal"
               else export(args.run_dir, args.out, args.tag))
    except (ExportError, OSError) as e:
        log.error("%s", e)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() \
        else out.stat().st_size
    log.info("wrote %s (%.1f MB)", out, size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
