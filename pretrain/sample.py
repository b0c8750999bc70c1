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
    tok = Tokenizer.from_file(str(tokenizer_path(meta["config"])))
    ids = tok.encode(prompt).ids or [0]
    torch.manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long)  # (1, T)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k)
    return tok.decode(out[0].tolist(), skip_special_tokens=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--prompt", default="", help="text to continue (default: empty)")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 is greedy (default 0)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = p.parse_args(argv)
    setup_logging()
    from pretrain.export import ExportError

    try:
        text = sample_text(args.run_dir, args.prompt, args.max_new_tokens, args.temperature,
                           args.top_k, args.seed)
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
