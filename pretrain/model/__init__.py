"""Plain-PyTorch Transformers: a decoder-only LM (GPT-2 / Llama styles) and an encoder-decoder
(2017 Transformer / T5 styles), both configured by one `ModelConfig`.

    from pretrain.model import ModelConfig, build_model, flops_per_token, mfu, generate
"""

from __future__ import annotations

from torch import nn

from pretrain.model.config import ModelConfig, padded_vocab_size, saved_model_config
from pretrain.model.decoder import DecoderLM
from pretrain.model.encdec import EncoderDecoder
from pretrain.model.flops import PEAK_BF16_FLOPS, flops_per_token, mfu, peak_flops
from pretrain.model.generate import generate

__all__ = [
    "PEAK_BF16_FLOPS", "DecoderLM", "EncoderDecoder", "ModelConfig", "build_model",
    "count_parameters", "flops_per_token", "generate", "mfu", "padded_vocab_size", "peak_flops",
    "saved_model_config",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes, freshly initialised. `cfg.vocab_size` must be set (the trainer
    fills it from the data's tokenizer). Build under `torch.device("meta")` to size big models
    without allocating them."""
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is not set: give it in the config or take it from "
                         "the data's tokenizer (padded_vocab_size)")
    if cfg.family == "decoder":
        return DecoderLM(cfg)
    return EncoderDecoder(cfg)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
