"""Fixtures for the model tests: the shipped tiny configs with a small vocabulary
(helpers/models.py), a fixed seed and one thread per test."""

import pytest
import torch
from helpers.models import tiny


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
