"""python -m pretrain.sample RUNDIR --prompt "def " [--max-new-tokens 64] [--temperature 0]

Text from a run's newest complete checkpoint (any ZeRO stage): greedy with --temperature 0
(the default), else sampling with optional --top-k. Decoder models only."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from pretrain.logs import setup_logging

log = logging.getLogger("pretrain.sample")


def tokenizer_path(config: dict) -> Path:
    """The run's tokenizer: data.tokenizer, else the (first) shard folder's copy."""
    data = config["data"]
    if data.get("tokenizer"):
        return Path(data["tokenizer"])
    path = data["path"] if isinstance(data["path"], str) else data["path"][0]["path"]
    return Path(path) / "tokenizer.json"


def sample_text(run_dir: str | Path, prompt: str, max_new_tokens: int = 64,
                temperature: float = 0.0, top_k: int | None = None, seed: int = 0) -> str:
    from tokenizers import Tokenizer

    from pretrain.export import load_trained_model
    from pretrain.model import generate

    model, meta = load_trained_model(run_dir)
    if model.cfg.family != "decoder":
        raise ValueError("pretrain.sample works with decoder models only; an encoder-decoder "
                         "translates with python -m pretrain.translate RUNDIR")
    tok = Tokenizer.from_file(str(tokenizer_path(meta.config)))
    ids = tok.encode(prompt).ids or [0]
    torch.manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long)  # (1, T)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k)
    return tok.decode(out[0].tolist(), skip_special_tokens=False)


def _checked(kind, check: str, minimum):
    """An argparse type: `kind` with a lower bound, and a message argparse reports as
    "argument --x: ..." (exit 2, usage, no traceback)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value >= minimum or value != value:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} is not {check}")
        return value
    return parse


def prompt_text(raw: str) -> str:
    """The prompt as UTF-8 text; the command line hands undecodable bytes over as surrogates."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = raw[e.start].encode("utf-8", "surrogateescape")
        raise ValueError(f"--prompt is not valid UTF-8 text (byte 0x{bad.hex()} at character "
                         f"{e.start})") from None
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--prompt", default="", help="text to continue (UTF-8; default: empty)")
    p.add_argument("--max-new-tokens", type=_checked(int, "≥ 0", 0), default=64,
                   help="tokens to generate (default: 64)")
    p.add_argument("--temperature", type=_checked(float, "≥ 0", 0.0), default=0.0,
                   help="0 (the default): greedy; above 0: sampling")
    p.add_argument("--top-k", type=_checked(int, "≥ 1 (leave it out to sample from every "
                                                  "token)", 1),
                   help="sample among the k most likely tokens only (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    args = p.parse_args(argv)
    setup_logging()
    from pretrain.export import ExportError

    try:
        text = sample_text(args.run_dir, prompt_text(args.prompt), args.max_new_tokens,
                           args.temperature, args.top_k, args.seed)
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
