"""parameter_shapes (torch-free, used by the init_from pre-flight) names exactly the parameters
build_model makes, with their shapes, for every shipped model config and the switches that add
or drop parameters."""

from __future__ import annotations

import pytest
import torch

from pretrain.model import build_model
from pretrain.model.shapes import parameter_shapes

NAMES = ["gpt-tiny", "llama-tiny", "t5-tiny", "transformer-tiny"]
SWITCHES = [{}, {"bias": False}, {"bias": True}, {"tie_embeddings": False},
            {"tie_embeddings": True}, {"norm_position": "post"}, {"activation": "geglu"},
            {"norm": "layernorm"}, {"position": "sinusoidal"}]


@pytest.mark.parametrize("update", SWITCHES, ids=lambda u: ",".join(f"{k}={v}" for k, v in
                                                                    u.items()) or "as-shipped")
@pytest.mark.parametrize("name", NAMES)
def test_shapes_are_those_of_the_built_model(name, update, tiny_cfg):
    cfg = tiny_cfg(name, **update)
    with torch.device("meta"):
        built = {n: tuple(p.shape) for n, p in build_model(cfg).named_parameters()}
    assert parameter_shapes(cfg) == built
