"""Shared fixtures for the model tests: the shipped tiny configs with a small vocabulary."""

from pathlib import Path

import pytest
import torch

from pretrain.configlib import load_yaml, validate_section
from pretrain.model import ModelConfig

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"
VOCAB = 96


def tiny(name: str, **update) -> ModelConfig:
    """configs/model/<name>.yaml with vocab_size=VOCAB and `update` applied (validated)."""
    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    data.update(vocab_size=VOCAB, **update)
    return validate_section(ModelConfig, data, source=name)


@pytest.fixture
def tiny_cfg():
    return tiny


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Tiny models run fastest on one thread (and do not fight parallel jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
