"""arrowtrain sample RUNDIR|MODEL.safetensors --prompt "def " [--max-new-tokens 64]

Text from a run's newest complete checkpoint (any ZeRO stage) or from an exported
`.safetensors` file (`arrowtrain export`; its tokenizer travels in the file, else give
--tokenizer). It samples by default, as nanoGPT's sample.py does: temperature 0.8 among the 40
most likely tokens (top-k 40, the GPT-2 paper's samples), seeded by --seed, so the same command
prints the same text; --temperature 0 decodes greedily (which soon repeats itself on small
models). Decoder models only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from arrowtrain.cmdline import command_parser, number
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

# torch and the model code are imported where they are used: `--help` answers at once.

log = logging.getLogger("arrowtrain.commands.sample")

DEFAULT_TEMPERATURE = 0.8  # nanoGPT's sample.py; 0: greedy
DEFAULT_TOP_K = 40  # the GPT-2 paper's samples (nanoGPT: 200, transformers: 50)


class SampleError(ValueError):
    """Bad input: the message names the file or option."""


def load_tokenizer(path: Path, hint: str = ""):
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise SampleError(f"tokenizer {path}: no such file{hint}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception type
        raise SampleError(f"tokenizer {path} cannot be read ({e})") from None


def load_export(path: Path, tokenizer: Path | None):
    """(model, tokenizer) of an exported .safetensors file."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    from data_tools.atomic import special_file_kind
    from pretrain.interop.export import TOKENIZER_KEY, load_exported

    kind = special_file_kind(path)
    if kind is not None:
        raise SampleError(f"{path} is {kind}, not a .safetensors file")
    if not path.is_file():
        raise SampleError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors' own error types
        raise SampleError(f"{path} is not a readable .safetensors file ({e})") from None
    if "model_config" not in metadata:
        raise SampleError(f"{path} has no `model_config` in its metadata: not a file written "
                          "by arrowtrain export")
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif TOKENIZER_KEY in metadata:
        tok = Tokenizer.from_str(metadata[TOKENIZER_KEY])
    else:
        raise SampleError(f"{path} carries no tokenizer (exported before exports carried one, "
                          "or made by another tool): pass --tokenizer tok/tokenizer.json (the "
                          "one its training data was sharded with)")
    return load_exported(path), tok


def load_run(run_dir: Path, tokenizer: Path | None):
    """(model, tokenizer) of a run folder's newest complete checkpoint."""
    from pretrain.interop.export import load_trained_model, tokenizer_path

    if not run_dir.is_dir():
        raise SampleError(f"{run_dir}: no such run folder or .safetensors file")
    model, meta = load_trained_model(run_dir)
    path = tokenizer or tokenizer_path(meta.config)
    hint = "" if tokenizer else " (the run's data folder moved? pass --tokenizer FILE)"
    return model, load_tokenizer(path, hint)


def sample_text(source: str | Path, prompt: str, max_new_tokens: int = 64,
                temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
                seed: int = 0,
                tokenizer: str | Path | None = None) -> str:
    """Continue `prompt` with the model of a run folder or an exported .safetensors file:
    sampled at `temperature` among the `top_k` most likely tokens (None: all), the same text for
    the same `seed`; temperature 0 is greedy."""
    import torch

    from pretrain.model.generate import generate

    source, tokenizer = Path(source), (Path(tokenizer) if tokenizer else None)
    exported = source.suffix == ".safetensors" or source.is_file()
    model, tok = load_export(source, tokenizer) if exported else load_run(source, tokenizer)
    if model.cfg.family != "decoder":
        raise SampleError("arrowtrain sample works with decoder models only; an encoder-decoder "
                          "translates with arrowtrain translate RUNDIR")
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise SampleError(f"the tokenizer has {tok.get_vocab_size()} tokens, the model only "
                          f"{model.cfg.vocab_size}: it is not the tokenizer this model was "
                          "trained with")
    ids = tok.encode(prompt).ids or [0]
    torch.manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long)  # (1, T)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k)
    return tok.decode(out[0].tolist(), skip_special_tokens=False)


def prompt_text(raw: str) -> str:
    """The prompt as UTF-8 text; the command line hands undecodable bytes over as surrogates."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = raw[e.start].encode("utf-8", "surrogateescape")
        raise ValueError(f"--prompt is not valid UTF-8 text (byte 0x{bad.hex()} at character "
                         f"{e.start})") from None
    return raw


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from pretrain.logs import setup_logging

    p = command_parser(prog or "python -m arrowtrain.commands.sample", __doc__)
    p.add_argument("source", type=Path, metavar="RUNDIR|FILE.safetensors",
                   help="a run folder (its newest complete checkpoint) or an exported file")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.json to use (default: the export's own, or the run's)")
    p.add_argument("--prompt", default="", help="text to continue (UTF-8; default: empty)")
    p.add_argument("--max-new-tokens", type=number(int, lambda n: n >= 0, "≥ 0"), default=64,
                   help="tokens to generate (default: 64)")
    p.add_argument("--temperature", type=number(float, lambda x: x >= 0, "≥ 0"),
                   default=DEFAULT_TEMPERATURE,
                   help="above 0: sampling, flatter as it grows; 0: greedy, the most likely "
                   f"token every time (default: {DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=number(int, lambda n: n >= 0, "≥ 0 (0: every token)"),
                   default=DEFAULT_TOP_K,
                   help="sample among the k most likely tokens only; 0: among all "
                   f"(default: {DEFAULT_TOP_K})")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed: the same seed gives the same text (default: 0)")
    args = p.parse_args(argv)
    setup_logging()
    from pretrain.interop.export import ExportError

    try:
        text = sample_text(args.source, prompt_text(args.prompt), args.max_new_tokens,
                           args.temperature, args.top_k or None, args.seed, args.tokenizer)
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
