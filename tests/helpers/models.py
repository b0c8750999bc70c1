"""The shipped model configs (configs/model/NAME.yaml) as validated ModelConfigs, for tests:
shipped_model() as the file ships, tiny() with a small vocabulary for tests that build models."""

from __future__ import annotations

from helpers.dist import REPO

CONFIG_DIR = REPO / "configs" / "model"
VOCAB = 96


def _validated(name: str, data: dict):
    from pretrain.configlib import validate_section
    from pretrain.model import ModelConfig

    return validate_section(ModelConfig, data, source=name)


def shipped_model(name: str, vocab: int = 32000):
    """configs/model/NAME.yaml, with `vocab` where the file leaves vocab_size to the data."""
    from pretrain.configlib import load_yaml

    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    if data.get("vocab_size") is None:
        data["vocab_size"] = vocab
    return _validated(name, data)


def tiny(name: str, **update):
    """configs/model/NAME.yaml with vocab_size=VOCAB and `update` applied (validated)."""
    from pretrain.configlib import load_yaml

    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    data.update(vocab_size=VOCAB, **update)
    return _validated(name, data)
