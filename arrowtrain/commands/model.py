"""arrowtrain model CONFIG [key=value ...]: print a model's shape, parameter count and
training FLOPs per token, without allocating it (built on the meta device)."""

from __future__ import annotations

import argparse
import sys

import torch

from pretrain.configlib import ConfigError, apply_overrides, load_yaml, validate_section
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.model import ModelConfig, build_model, count_parameters, flops_per_token

DEFAULT_VOCAB = 32000


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog or "python -m arrowtrain.commands.model",
        description="Print a model summary, including the lines 'parameters: N' and "
                    "'flops_per_token: N' (training FLOPs, forward + backward).")
    p.add_argument("config", help="a model config (configs/model/*.yaml) or a run config with "
                                  "a 'model:' section")
    p.add_argument("overrides", nargs="*", help="model keys to change, e.g. n_layers=6")
    p.add_argument("--vocab-size", type=int, default=None,
                   help=f"vocabulary size when the config leaves it to the data "
                        f"(default {DEFAULT_VOCAB})")
    p.add_argument("--seq-len", type=int, default=None,
                   help="sequence length for the FLOP count (default: max_seq_len)")
    p.add_argument("--target-len", type=int, default=None,
                   help="encoder-decoder only: target length for the FLOP count (default: seq-len)")
    return p.parse_intermixed_args(argv)


def load_model_config(path: str, overrides: list[str], vocab_size: int | None) -> ModelConfig:
    data = load_yaml(path)
    is_run = "model" in data
    section = apply_overrides(data.get("model") if is_run else data, overrides)
    cfg = validate_section(ModelConfig, section, prefix="model" if is_run else "", source=path)
    if vocab_size is not None:
        cfg = cfg.model_copy(update={"vocab_size": vocab_size})
    elif cfg.vocab_size is None:
        print(f"note: {path} leaves vocab_size to the data's tokenizer; counting with "
              f"{DEFAULT_VOCAB} (pass --vocab-size N)", file=sys.stderr)
        cfg = cfg.model_copy(update={"vocab_size": DEFAULT_VOCAB})
    return cfg


def style(cfg: ModelConfig) -> str:
    parts = [f"{cfg.norm_position}-{cfg.norm}", f"{cfg.position} positions", cfg.activation,
             "biases" if cfg.bias else "no biases",
             "tied embeddings" if cfg.tie_embeddings else "untied embeddings"]
    return ", ".join(parts)


def summary(cfg: ModelConfig, seq_len: int, target_len: int | None) -> list[str]:
    with torch.device("meta"):
        model = build_model(cfg)
    layers = (f"{cfg.n_layers}" if cfg.family == "decoder"
              else f"{cfg.n_encoder_layers} encoder + {cfg.n_decoder_layers} decoder")
    n_params = count_parameters(model)
    return [
        f"family: {cfg.family}",
        f"style: {style(cfg)}",
        f"layers: {layers}",
        f"d_model: {cfg.d_model}",
        f"heads: {cfg.n_heads} (kv heads {cfg.kv_heads}, head dim {cfg.head_dim})",
        f"d_ff: {cfg.ffn_dim}",
        f"vocab_size: {cfg.vocab_size}",
        f"max_seq_len: {cfg.max_seq_len}",
        f"parameters: {n_params}",
        f"parameters_millions: {n_params / 1e6:.2f}",
        f"bf16_weights_gib: {n_params * 2 / 2**30:.3f}",
        f"seq_len: {seq_len}",
        f"flops_per_token: {flops_per_token(cfg, seq_len, target_len)}",
    ]


def main(argv=None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    try:
        cfg = load_model_config(args.config, args.overrides, args.vocab_size)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    seq_len = args.seq_len or cfg.max_seq_len
    if seq_len > cfg.max_seq_len:
        print(f"error: --seq-len {seq_len} exceeds max_seq_len {cfg.max_seq_len}", file=sys.stderr)
        return EXIT_CONFIG
    print("\n".join(summary(cfg, seq_len, args.target_len)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
