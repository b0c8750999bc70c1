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

import json
import logging
import sys
from pathlib import Path
from typing import Any

from arrowtrain.cmdline import command_parser
from data_tools.atomic import (
    UnsafeOutputError,
    atomic_path,
    check_output_file,
    special_file_kind,
)
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.interop.hf_format import HFFormatError, add_base_prefix, from_hf_config, from_hf_state
from pretrain.logs import setup_logging

log = logging.getLogger("arrowtrain.commands.import_hf")


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; /dev/zero never ends


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
        name = str(hf_dir)
        hub_like = not hf_dir.is_absolute() and not name.startswith(".") and name.count("/") <= 1
        raise HFFormatError(f"{hf_dir}: no such folder" + (f". {download_hint(name)}"
                                                          if hub_like else ""))
    if not hf_dir.is_dir():
        raise HFFormatError(f"{hf_dir}: not a folder (HF_DIR is a local transformers model "
                            "folder: config.json + model.safetensors)")
    path = hf_dir / "config.json"
    kind = special_file_kind(path)
    if kind is not None:
        raise HFFormatError(f"{path} is {kind}, not a JSON file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise HFFormatError(f"{path}: no such file (HF_DIR must be a local transformers model "
                            "folder)") from None
    except OSError as e:
        raise HFFormatError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise HFFormatError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: not a "
                            "transformers config.json")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
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
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HFFormatError(f"{index}: not a safetensors index ({e})") from None
        if not isinstance(weight_map, dict):
            raise HFFormatError(f"{index}: weight_map is a JSON {type(weight_map).__name__}, "
                                "not an object of tensor name -> shard file")
        bad = [s for s in weight_map.values() if not isinstance(s, str) or Path(s).name != s]
        if bad:
            raise HFFormatError(f"{index}: shard names must be plain file names in {hf_dir}, "
                                f"got {bad[:3]}")
        return [hf_dir / s for s in sorted(set(weight_map.values()))]
    pickles = sorted(p.name for p in hf_dir.glob("pytorch_model*.bin"))
    raise HFFormatError(f"{hf_dir}: no model.safetensors" + (
        f", only {', '.join(pickles)} (a pickle, never loaded here): convert it to "
        "safetensors first, e.g. `model.save_pretrained(dir, safe_serialization=True)` in "
        "a transformers session you trust" if pickles else ""))


def _file_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{tensor: shape} from the headers of the weight files (no tensor data read);
    HFFormatError naming a file that is not safetensors or a tensor that is not floating."""
    from safetensors import safe_open

    from pretrain.train.init_from import FLOAT_DTYPES

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        kind = special_file_kind(f)
        if kind is not None:
            raise HFFormatError(f"{f} is {kind}, not a .safetensors file")
        try:
            with safe_open(str(f), framework="numpy") as st:
                slices = {k: st.get_slice(k) for k in st.keys()}  # noqa: SIM118
                bad = [f"{k} ({v.get_dtype()})" for k, v in slices.items()
                       if v.get_dtype() not in FLOAT_DTYPES]
                shapes.update({k: tuple(v.get_shape()) for k, v in slices.items()})
        except FileNotFoundError:
            raise HFFormatError(f"{f}: no such file (named by the index)") from None
        except Exception as e:  # noqa: BLE001 - safetensors' own SafetensorError
            raise HFFormatError(f"{f}: not a readable safetensors file ({e})") from None
        if bad:
            raise HFFormatError(f"{f}: weights must be floating point; {len(bad)} tensor(s) "
                                f"are not: {', '.join(bad[:5])}")
    return shapes


def _model_config(hf_dir: Path):
    """(family, ModelConfig) of config.json; HFFormatError naming the fields at fault."""
    from pydantic import ValidationError

    from pretrain.model import ModelConfig

    family, data = from_hf_config(read_hf_config(hf_dir))
    try:
        return family, ModelConfig.model_validate(data)
    except ValidationError as e:
        raise HFFormatError(f"{hf_dir / 'config.json'} gives a model we cannot build: "
                            + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                        for x in e.errors())) from None


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Write `out` (our export format) from the HF folder `hf_dir`; HFFormatError on anything
    we cannot reproduce. Nothing is built before the config's shapes match the tensors."""
    import torch
    from safetensors.torch import load_file, save_model

    from pretrain.model import build_model
    from pretrain.model.shapes import shape_mismatches

    hf_dir, out = Path(hf_dir), check_output_file(out)
    family, cfg = _model_config(hf_dir)
    files = weight_files(hf_dir)
    n_tensors = len(_file_shapes(files))
    if cfg.n_layers > n_tensors:  # before renaming walks n_layers blocks
        raise HFFormatError(f"{hf_dir / 'config.json'} declares {cfg.n_layers} layers but "
                            f"the weights hold only {n_tensors} tensors")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise HFFormatError(f"{hf_dir}: {len(bad)} tensor(s) hold NaN or infinite values "
                            f"({', '.join(sorted(bad)[:5])})")
    state = from_hf_state(family, cfg, add_base_prefix(family, tensors))
    got = {k: tuple(v.shape) for k, v in state.items()
           if not (k == "lm_head.weight" and cfg.tie_embeddings)}
    lines = shape_mismatches(cfg, got)
    if lines:
        raise HFFormatError(f"{hf_dir}: the weights do not fit config.json ({len(lines)} "
                            "problem(s)): " + "; ".join(lines[:8]))
    model = build_model(cfg)
    model.load_state_dict(state, strict=False)  # lm_head: tied, or present (checked above)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(check_output_file(out), umask_mode=True) as tmp:
        save_model(model.eval(), str(tmp), metadata={
            "model_config": json.dumps(cfg.model_dump(mode="json")),
            "imported_from": f"{family} {hf_dir.resolve()}"})
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = command_parser(prog or "python -m arrowtrain.commands.import_hf", __doc__)
    p.add_argument("hf_dir", type=Path, help="local transformers folder (config.json + "
                   "model.safetensors), e.g. one written by save_pretrained or `hf download "
                   "MODEL_ID --local-dir DIR` (nothing is downloaded here)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    args = p.parse_args(argv)
    setup_logging()
    try:
        out = import_hf(args.hf_dir, args.out)
    except (HFFormatError, UnsafeOutputError, OSError) as e:
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
