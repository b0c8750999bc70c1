"""The shipped model configs (configs/model/NAME.yaml) as validated ModelConfigs, for tests."""

from __future__ import annotations

from helpers.dist import REPO
from pretrain.configlib import load_yaml, validate_section
from pretrain.model import ModelConfig

CONFIG_DIR = REPO / "configs" / "model"


def shipped_model(name: str, vocab: int = 32000) -> ModelConfig:
    """configs/model/NAME.yaml, with `vocab` where the file leaves vocab_size to the data."""
    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    if data.get("vocab_size") is None:
        data["vocab_size"] = vocab
    return validate_section(ModelConfig, data, source=name)
