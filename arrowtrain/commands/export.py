"""arrowtrain export RUNDIR --out OUT [--format safetensors|hf] [--tag step_00001000]
arrowtrain export RUNDIR --format universal [--tag step_00001000]

Consolidates a run's checkpoint (any ZeRO stage) into fp32 weights and prints the path it
wrote (the only line on stdout; progress and notes go to stderr).
  safetensors  (default) one file OUT that `load_exported` (build_model + load_model) reads
               back; the model config travels in its metadata (key `model_config`, JSON), and
               so does the run's tokenizer (key `tokenizer_json`, the tokenizer.json text), so
               `arrowtrain sample FILE.safetensors` needs nothing else.
  hf           a folder OUT for Hugging Face transformers, no custom code: config.json,
               model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json.
               GPT-2-style decoders become GPT2LMHeadModel, Llama-style LlamaForCausalLM; a
               model setting without an HF equivalent is refused, naming it. Encoder-decoders
               are not exported to this format.
  universal    (no --out) re-shards a ZeRO 1-3 checkpoint offline into DeepSpeed's universal
               checkpoint beside it (checkpoints/TAG_universal, pretrain/train/reshard.py): what
               a resume on another number of ranks or another ZeRO stage loads (the trainer
               converts by itself when needed; this is for moving runs between clusters)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from arrowtrain.cmdline import command_parser
from data_tools.atomic import UnsafeOutputError
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.logs import setup_logging

# torch, DeepSpeed and the model code are imported after the arguments are parsed: `--help`
# and a usage error answer at once.

log = logging.getLogger("arrowtrain.commands.export")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = command_parser(prog or "python -m arrowtrain.commands.export", __doc__)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--out", type=Path,
                   help="output: a .safetensors file, or a folder with --format hf (not with "
                   "universal)")
    p.add_argument("--tokenizer", type=Path,
                   help="--format hf: tokenizer.json or shard folder to ship (default: the "
                   "run's data folder's)")
    p.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    p.add_argument("--format", choices=("safetensors", "hf", "universal"), default="safetensors",
                   help="safetensors (default): one fp32 file for pretrain; hf: a transformers "
                   "folder; universal: DeepSpeed's universal checkpoint written beside the "
                   "checkpoint, for a resume on any number of ranks")
    args = p.parse_args(argv)
    if (args.format == "universal") == (args.out is not None):
        p.error("--out is required" if args.out is None else
                "--format universal writes checkpoints/TAG_universal beside the checkpoint; "
                "drop --out")
    setup_logging()
    from pretrain.interop.export import ExportError, export, export_hf, export_universal
    from pretrain.interop.hf_format import HFFormatError

    try:
        if args.format == "hf":
            out = export_hf(args.run_dir, args.out, args.tag, args.tokenizer)
        elif args.format == "universal":
            out = export_universal(args.run_dir, args.tag)
        else:
            out = export(args.run_dir, args.out, args.tag)
    except (ExportError, HFFormatError, UnsafeOutputError, OSError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() \
        else out.stat().st_size
    log.info("wrote %s (%.1f MB)", out, size / 1e6)
    print(out)  # the result alone on stdout: `MODEL=$(arrowtrain export ...)`
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
