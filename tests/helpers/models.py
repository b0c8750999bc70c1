"""The shipped tiny model configs with a small vocabulary, for tests that build models directly."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
VOCAB = 96


def tiny(name: str, **update):
    """configs/model/<name>.yaml with vocab_size=VOCAB and `update` applied (validated)."""
    from pretrain.configlib import load_yaml, validate_section
    from pretrain.model import ModelConfig

    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    data.update(vocab_size=VOCAB, **update)
    return validate_section(ModelConfig, data, source=name)
