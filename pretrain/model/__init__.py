"""Plain-PyTorch Transformers: a decoder-only LM (GPT-2 / Llama styles) and an encoder-decoder
(2017 Transformer / T5 styles), both configured by one `ModelConfig`.

    from pretrain.model import ModelConfig, build_model, flops_per_token, mfu
    from pretrain.model.generate import generate, greedy, beam_search   # decoding

`ModelConfig` imports without torch (the launchers validate configs before any rank starts);
the models are imported on first use. Decoding is imported from its module: a package attribute
`generate` would be the function or the submodule depending on what was imported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain import lazy_attributes
from pretrain.model.config import ModelConfig, padded_vocab_size, saved_model_config

if TYPE_CHECKING:
    from torch import nn

_LAZY = {"DecoderLM": "pretrain.model.decoder", "EncoderDecoder": "pretrain.model.encdec",
         "PEAK_BF16_FLOPS": "pretrain.model.flops", "flops_per_token": "pretrain.model.flops",
         "mfu": "pretrain.model.flops", "peak_flops": "pretrain.model.flops"}

__all__ = [
    "PEAK_BF16_FLOPS", "DecoderLM", "EncoderDecoder", "ModelConfig", "build_model",
    "count_parameters", "flops_per_token", "mfu", "padded_vocab_size", "peak_flops",
    "saved_model_config",
]

__getattr__ = lazy_attributes(__name__, _LAZY)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes, freshly initialised. `cfg.vocab_size` must be set (the trainer
    fills it from the data's tokenizer). Build under `torch.device("meta")` to size big models
    without allocating them."""
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is not set: give it in the config or take it from "
                         "the data's tokenizer (padded_vocab_size)")
    if cfg.family == "decoder":
        from pretrain.model.decoder import DecoderLM

        return DecoderLM(cfg)
    from pretrain.model.encdec import EncoderDecoder

    return EncoderDecoder(cfg)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
