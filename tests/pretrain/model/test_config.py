"""ModelConfig validation and the shipped configs (the `arrowtrain model` summary:
tests/arrowtrain/commands/test_model.py)."""


import pytest
import torch
from helpers.models import CONFIG_DIR, shipped_model

from pretrain.configlib import ConfigError, load_yaml, validate_section
from pretrain.model import (
    ModelConfig,
    build_model,
    count_parameters,
    padded_vocab_size,
    saved_model_config,
)

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
EXACT = {"gpt2-124m": 124_439_808, "llama-1.1b": 1_100_048_384}
PAPER = {"transformer-base": 65e6, "transformer-big": 213e6}  # Vaswani et al. 2017, Table 3



def test_the_issue_sizes_are_shipped():
    for name in ["gpt2-124m", "gpt2-350m", "llama-1.1b", "transformer-base", "transformer-big",
                 "t5-base", "gpt-demo", "gpt-tiny", "llama-tiny", "t5-tiny", "transformer-tiny"]:
        assert name in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_parses_and_builds(name):
    cfg = shipped_model(name)
    big = cfg.d_model >= 512
    with torch.device("meta" if big else "cpu"):
        model = build_model(cfg)
    n = count_parameters(model)
    if name in EXACT:
        assert n == EXACT[name]
    if name in PAPER:
        assert abs(n - PAPER[name]) / PAPER[name] < 0.05, n
    if "tiny" in name:
        assert "vocab_size" not in load_yaml(CONFIG_DIR / f"{name}.yaml")  # filled from data
        ids = torch.randint(0, 100, (1, 8))
        batch = ({"input_ids": ids} if cfg.family == "decoder" else
                 {"input_ids": ids, "decoder_input_ids": ids})
        assert model(**batch)["logits"].shape == (1, 8, 32000)


def test_all_problems_reported_at_once_naming_keys():
    bad = {"family": "decoder", "max_seq_len": 64, "d_model": 96, "n_heads": 5, "n_layers": 2,
           "n_encoder_layers": 2, "dropout": 1.5, "activation": "tanh", "colour": "red",
           "activation_checkpointing": {"every_n": 0}}
    with pytest.raises(ConfigError) as err:
        validate_section(ModelConfig, bad, prefix="model", source="run.yaml")
    text = str(err.value)
    for key in ["model.n_heads", "model.n_encoder_layers", "model.dropout", "model.activation",
                "model.colour: unknown key", "run.yaml",
                "model.activation_checkpointing: moved to train.activation_checkpointing"]:
        assert key in text, f"{key!r} not in:\n{text}"


@pytest.mark.parametrize("update, message", [
    ({"n_kv_heads": 3}, "n_kv_heads=3 must divide n_heads=4"),
    ({"family": "encdec"}, "required for family 'encdec'"),
    ({"doc_masking": True, "family": "encdec", "n_layers": None, "n_encoder_layers": 1,
      "n_decoder_layers": 1}, "document masking"),
    ({"d_model": 72, "n_heads": 8, "position": "rope"}, "even head dimension"),
])
def test_cross_field_checks(update, message):
    data = {"family": "decoder", "max_seq_len": 8, "d_model": 64, "n_heads": 4, "n_layers": 1}
    with pytest.raises(ConfigError, match=message):
        validate_section(ModelConfig, {**data, **update})


def test_moved_key_is_dropped_from_saved_configs_and_vocab_padding():
    base = {"family": "decoder", "max_seq_len": 8, "d_model": 64, "n_heads": 4, "n_layers": 6}
    # a checkpoint or export written before activation_checkpointing moved to train still loads
    old = saved_model_config({**base, "activation_checkpointing": "full"})
    assert old == ModelConfig(**base) and "activation_checkpointing" not in old.model_dump()
    assert padded_vocab_size(8192) == 8192 and padded_vocab_size(50257) == 50304
    with pytest.raises(ValueError, match="vocab_size is not set"):
        build_model(ModelConfig(**base))
