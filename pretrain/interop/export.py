"""A run's checkpoint (any ZeRO stage) -> fp32 weights: the library of `arrowtrain export`,
also what `arrowtrain sample / translate / attention` load a run with.

  load_trained_model   the model of a run's newest complete (or given) checkpoint
  export               one .safetensors file that `load_exported` (build_model + load_model)
                       reads back; the model config travels in its metadata (key
                       `model_config`, JSON), and so does the run's tokenizer (key
                       `tokenizer_json`, the tokenizer.json text)
  export_hf            a folder for Hugging Face transformers, no custom code (hf_format.py)
  export_universal     DeepSpeed's universal checkpoint beside the checkpoint
                       (pretrain/train/reshard.py)
  tokenizer_path       a run config's tokenizer.json"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from data_tools.atomic import atomic_path, check_output_file, check_output_folder, with_umask
from pretrain.interop.hf_format import to_hf_config, to_hf_state
from pretrain.model import build_model, saved_model_config
from pretrain.train import checkpoint as ckpt
from pretrain.train.checkpoint_meta import CheckpointMeta, resume_candidates
from pretrain.train.distenv import deepspeed_output, import_deepspeed
from pretrain.train.safeload import UnsafeCheckpointFile, weights_only_loading

log = logging.getLogger("pretrain.interop.export")


class ExportError(RuntimeError):
    pass


def checkpoint_dir(run_dir: Path, tag: str | None = None) -> tuple[Path, CheckpointMeta]:
    """(tag folder, meta) of `tag`, or of the newest complete checkpoint, after checking every
    file against meta.json (size, sha256) and unpickling it weights-only. Without `tag` a
    damaged checkpoint is skipped for the previous one, with a warning naming the file."""
    ckpt_root = run_dir / "checkpoints"
    if tag is not None and (tag in ("", ".", "..") or Path(tag).name != tag or "\\" in tag):
        raise ExportError(f"--tag {tag!r}: a checkpoint tag is one folder name in {ckpt_root} "
                          "(e.g. step_00001000), never a path")
    if tag is not None and not (ckpt_root / tag).is_dir():
        raise ExportError(f"no checkpoint {ckpt_root / tag}")
    candidates = [tag] if tag is not None else resume_candidates(ckpt_root)
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
        with weights_only_loading(), deepspeed_output():
            return _merge(tag_dir, zero_stage)
    except UnsafeCheckpointFile as e:
        raise ExportError(str(e)) from None


def _merge(tag_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    if zero_stage == 0:  # the full model is in rank 0's model-states file
        path = tag_dir / "mp_rank_00_model_states.pt"
        states = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # merging runs on the CPU in any case
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # Merges the fp32 master partitions of every rank (ZeRO 1-3); prints progress (to stderr).
    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def load_trained_model(run_dir: str | Path, tag: str | None = None,
                       ) -> tuple[nn.Module, CheckpointMeta]:
    """The model of a run's checkpoint, on CPU in fp32, and the checkpoint's meta."""
    tag_dir, meta = checkpoint_dir(Path(run_dir), tag)
    return _checkpoint_model(tag_dir, meta), meta


def _checkpoint_model(tag_dir: Path, meta: CheckpointMeta) -> nn.Module:
    cfg = saved_model_config(meta.config["model"])
    model = build_model(cfg)
    state = _fp32_state_dict(tag_dir, meta.zero_stage)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights may be stored once; anything else missing is an error.
    tied = {n for n in missing if _is_tied(model, n)}
    if set(missing) - tied or unexpected:
        raise ExportError(f"checkpoint {tag_dir} does not match the model: missing "
                          f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    return model.eval()


def _is_tied(model: nn.Module, name: str) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = dict(model.named_parameters())
    return name in params and name not in unique


TOKENIZER_KEY = "tokenizer_json"  # safetensors metadata: the tokenizer.json text


def tokenizer_path(config: dict) -> Path:
    """A run's tokenizer: data.tokenizer, else the (first) shard folder's copy."""
    data = config["data"]
    if data.get("tokenizer"):
        return Path(data["tokenizer"])
    path = data["path"] if isinstance(data["path"], str) else data["path"][0]["path"]
    return Path(path) / "tokenizer.json"


def export(run_dir: str | Path, out: str | Path, tag: str | None = None) -> Path:
    from safetensors.torch import save_model

    out = check_output_file(out)  # before the slow merge of the weights
    model, meta = load_trained_model(run_dir, tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"model_config": json.dumps(meta.config["model"]), "step": str(meta.step),
                "data_fingerprint": meta.data_fingerprint}
    tok = tokenizer_path(meta.config)
    if tok.is_file():
        metadata[TOKENIZER_KEY] = tok.read_text()
    else:
        log.warning("the run's tokenizer %s is gone: the export carries none (pass "
                    "--tokenizer to arrowtrain sample)", tok)
    with atomic_path(check_output_file(out), umask_mode=True) as tmp:
        save_model(model, str(tmp), metadata=metadata)
    return out


def export_hf(run_dir: str | Path, out: str | Path, tag: str | None = None,
              tokenizer: str | Path | None = None) -> Path:
    """Write the HF folder `out` (see the module doc). The tokenizer is the one of the run's
    (first) data folder, or `tokenizer`: a tokenizer.json or a shard folder."""
    from safetensors.torch import save_file

    out = Path(out)
    _check_out_folder(out)  # before any work
    tag_dir, meta = checkpoint_dir(Path(run_dir), tag)
    cfg = saved_model_config(meta.config["model"])
    to_hf_config(cfg, {})  # refuses (naming the fields) before the slow merge of the weights
    tok_file = _tokenizer_file(meta.config, tokenizer)
    special = _special_tokens(tok_file)
    tensors = to_hf_state(cfg, _checkpoint_model(tag_dir, meta).state_dict())
    ids = {k: special[f"{k}_id"] for k in ("bos_token", "eos_token", "pad_token")}
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={
        "format": "pt", "step": str(meta.step), "data_fingerprint": meta.data_fingerprint})
    with_umask(tmp / "model.safetensors")  # safetensors writes 0600
    _write_json(tmp / "config.json", to_hf_config(cfg, {k[:-6]: v for k, v in ids.items()}))
    _write_json(tmp / "generation_config.json",
                {k + "_id": v for k, v in ids.items() if v is not None})
    shutil.copyfile(tok_file, tmp / "tokenizer.json")
    _write_json(tmp / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
        **{k: special[k] for k in ("bos_token", "eos_token", "pad_token") if special[k]},
        **({"additional_special_tokens": special["sentinels"]} if special["sentinels"] else {})})
    out.mkdir(exist_ok=True)
    for f in HF_FILES:  # each file replaced whole; a reader never sees half of one
        os.replace(tmp / f, out / f)
    tmp.rmdir()
    return out


HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json")


def _check_out_folder(out: Path) -> None:
    """`out` may be new, empty or an earlier HF export (its files are replaced); a folder
    holding anything else is refused rather than mixed into."""
    check_output_folder(out)  # UnsafeOutputError on a file, a device, a FIFO
    others = sorted(p.name for p in out.iterdir() if p.name not in HF_FILES) \
        if out.is_dir() else []
    if others:
        raise ExportError(f"--out {out} holds other files ({', '.join(others[:5])}): give a new "
                          "or empty folder")


def _tokenizer_file(run_config: dict, given: str | Path | None) -> Path:
    """tokenizer.json of `given` (a file or shard folder), or of the run's first data folder."""
    from data_tools.folder import read_manifest
    from data_tools.manifest import ManifestError
    from pretrain.data.config import DataConfig

    if given is not None and Path(given).is_file():
        return Path(given)
    folder = Path(given) if given is not None else Path(
        DataConfig.model_validate(run_config["data"]).folders()[0][0])
    try:
        return folder / (read_manifest(folder).tokenizer.file or "tokenizer.json")
    except ManifestError as e:
        raise ExportError(f"cannot find the tokenizer to ship: {e} (pass --tokenizer "
                          "tokenizer.json)") from None


def _special_tokens(tok_file: Path) -> dict:
    """bos/eos/pad tokens and ids and T5 sentinels, found as data_tools shard finds them."""
    from data_tools.errors import DataToolsError
    from data_tools.tokenizer import load_tokenizer, tokenizer_info

    try:
        tok = load_tokenizer(tok_file)
        info = tokenizer_info(tok, tok_file)
    except DataToolsError as e:
        raise ExportError(str(e)) from None
    ids = {"bos_token": info.bos_id, "eos_token": info.eos_id, "pad_token": info.pad_id}
    out: dict = {f"{k}_id": v for k, v in ids.items()}
    out.update({k: None if v is None else tok.id_to_token(v) for k, v in ids.items()})
    out["sentinels"] = [tok.id_to_token(i) for i in info.sentinel_ids]
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_universal(run_dir: str | Path, tag: str | None = None) -> Path:
    """checkpoints/TAG_universal beside the checkpoint, converted once (reused when it is the
    copy of this very checkpoint). Holds the run folder's lock meanwhile, as a run does: a run
    cannot rewrite the checkpoint under the conversion, nor two conversions race."""
    from pretrain.train.runlock import RunDirBusy, RunLock

    if not Path(run_dir).is_dir():
        raise ExportError(f"{run_dir}: no such run folder")
    try:
        lock = RunLock(Path(run_dir), purpose="arrowtrain export --format universal").acquire()
    except RunDirBusy as e:
        raise ExportError(str(e)) from None
    try:
        return _convert_universal(Path(run_dir), tag)
    finally:
        lock.release()


def _convert_universal(run_dir: Path, tag: str | None) -> Path:
    from pretrain.train import reshard

    tag_dir, meta = checkpoint_dir(run_dir, tag)
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
    """Rebuild the model a safetensors export describes and load its weights (strict);
    ExportError naming the file when its metadata's model does not match its tensors."""
    from safetensors.torch import load_model

    from pretrain.model.shapes import shape_mismatches
    from pretrain.train.init_from import InitFileError, read_init_file

    try:  # the header alone: shapes checked against the config before anything is built
        cfg, shapes = read_init_file(Path(path), label="")
    except InitFileError as e:
        raise ExportError(str(e)) from None
    lines = shape_mismatches(cfg, shapes)
    if lines:
        raise ExportError(f"{path}: its model_config does not describe its tensors "
                          f"({len(lines)} problem(s)): " + "; ".join(lines[:8]))
    model = build_model(cfg)
    load_model(model, str(path), strict=True)
    return model.eval()
