"""arrowtrain import-hf HF_DIR --out FILE.safetensors

Turns a local Hugging Face GPT-2 (GPT2LMHeadModel) or Llama (LlamaForCausalLM) folder into our
export format: one fp32 safetensors file with the model config in its metadata, which
`pretrain.interop.export.load_exported` rebuilds and a run config's
`init_from: FILE.safetensors` starts training from. Reads config.json and *.safetensors only: no
remote code, no pickles (a folder that has only pytorch_model.bin is refused). A config we
cannot reproduce exactly is refused, naming every field at fault. To continue pretraining on
your own text, shard it with the model's tokenizer: `arrowtrain data shard ...
--tokenizer HF_DIR/tokenizer.json`. Prints the path it wrote (the only line on stdout)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from data_tools.atomic import with_umask
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.interop.hf_format import HFFormatError, add_base_prefix, from_hf_config, from_hf_state
from pretrain.logs import setup_logging

log = logging.getLogger("arrowtrain.commands.import_hf")


def download_hint(name: str) -> str:
    """How to fetch a Hub model into a local folder first (import-hf never downloads)."""
    folder = Path(name).name + "-hf"
    return (f"import-hf reads a local folder and downloads nothing; if {name!r} is a Hugging "
            "Face Hub model id, download its files first (pip install huggingface_hub): `hf "
            f"download {name} config.json model.safetensors tokenizer.json --local-dir {folder}` "
            f"(older versions: `huggingface-cli download ...`), then `arrowtrain import-hf "
            f"{folder} --out {Path(name).name}.safetensors`")


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    if not hf_dir.exists():
        raise HFFormatError(f"{hf_dir}: no such folder. {download_hint(str(hf_dir))}")
    if not hf_dir.is_dir():
        raise HFFormatError(f"{hf_dir}: not a folder (HF_DIR is a local transformers model "
                            "folder: config.json + model.safetensors)")
    path = hf_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HFFormatError(f"{path}: no such file (HF_DIR must be a local transformers model "
                            "folder)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HFFormatError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(data, dict):
        raise HFFormatError(f"{path}: top level is not a JSON object")
    return data


def weight_files(hf_dir: Path) -> list[Path]:
    """model.safetensors, or the shards its index names; never a pickle."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HFFormatError(f"{index}: not a safetensors index ({e})") from None
        bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
        if bad:
            raise HFFormatError(f"{index}: shard names must be plain file names in {hf_dir}, "
                                f"got {bad[:3]}")
        return [hf_dir / s for s in shards]
    pickles = sorted(p.name for p in hf_dir.glob("pytorch_model*.bin"))
    raise HFFormatError(f"{hf_dir}: no model.safetensors" + (
        f", only {', '.join(pickles)} (a pickle, never loaded here): convert it to "
        "safetensors first, e.g. `model.save_pretrained(dir, safe_serialization=True)` in "
        "a transformers session you trust" if pickles else ""))


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Write `out` (our export format) from the HF folder `hf_dir`; HFFormatError on anything
    we cannot reproduce."""
    import torch
    from pydantic import ValidationError
    from safetensors.torch import load_file, save_model

    from pretrain.model import ModelConfig, build_model

    hf_dir = Path(hf_dir)
    family, data = from_hf_config(read_hf_config(hf_dir))
    try:
        cfg = ModelConfig.model_validate(data)
    except ValidationError as e:
        raise HFFormatError(f"{hf_dir / 'config.json'} gives a model we cannot build: "
                            + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                        for x in e.errors())) from None
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(hf_dir):
        tensors.update(load_file(str(f)))
    state = from_hf_state(family, cfg, add_base_prefix(family, tensors))
    model = build_model(cfg)
    shapes = _shape_problems(model, state)
    missing, unexpected = ([], []) if shapes else model.load_state_dict(state, strict=False)
    if missing or unexpected or shapes:
        raise HFFormatError(f"{hf_dir}: the weights do not fit the config: missing "
                            f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
                            + (f", shapes {shapes[:8]}" if shapes else ""))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model.eval(), str(out), metadata={
        "model_config": json.dumps(cfg.model_dump(mode="json")),
        "imported_from": f"{family} {hf_dir.resolve()}"})
    with_umask(out)  # safetensors writes 0600
    return out


def _shape_problems(model, state) -> list[str]:
    want = dict(model.state_dict())
    return [f"{k}: {tuple(v.shape)} vs {tuple(want[k].shape)}" for k, v in state.items()
            if k in want and v.shape != want[k].shape]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog or "python -m arrowtrain.commands.import_hf",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir", type=Path, help="local transformers folder (config.json + "
                   "model.safetensors), e.g. one written by save_pretrained or `hf download "
                   "MODEL_ID --local-dir DIR` (nothing is downloaded here)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    args = p.parse_args(argv)
    setup_logging()
    try:
        out = import_hf(args.hf_dir, args.out)
    except (HFFormatError, OSError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    log.info("wrote %s (%.1f MB); start a run from it with `init_from: %s`", out,
             out.stat().st_size / 1e6, out)
    if (args.hf_dir / "tokenizer.json").is_file():
        log.info("its tokenizer: shard your data with --tokenizer %s",
                 args.hf_dir / "tokenizer.json")
    print(out)  # the result alone on stdout
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
