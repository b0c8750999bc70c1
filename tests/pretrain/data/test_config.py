"""DataConfig: typed, unknown keys refused, every problem reported at once."""

from __future__ import annotations

import pytest

from pretrain.configlib import ConfigError, validate_section
from pretrain.data import DataConfig


def test_valid_configs_and_normalised_weights():
    cfg = validate_section(DataConfig, {"path": "data/x", "seq_len": 128}, "data")
    assert cfg.folders() == [("data/x", 1.0)] and cfg.objective == "clm"
    mix = validate_section(DataConfig, {"path": [{"path": "a", "weight": 3}, {"path": "b",
                                                  "weight": 1}], "seq_len": 16}, "data")
    assert mix.folders() == [("a", 0.75), ("b", 0.25)]
    t5 = validate_section(DataConfig, {"path": "d", "objective": "span_corruption",
                                       "input_length": 512, "target_length": 114}, "data")
    assert t5.noise_density == 0.15 and t5.mean_span_length == 3.0


def test_all_problems_reported_together():
    # the objective's name and the keys it needs: tests/pretrain/objectives/test_registry.py
    with pytest.raises(ConfigError) as e:
        validate_section(DataConfig, {"path": [{"path": "a", "weight": -1}], "seq_len": 0,
                                      "shuffel": False}, "data")
    text = str(e.value)
    for expected in ("data.path", "data.seq_len", "data.shuffel: unknown key"):
        assert expected in text, text


def test_shuffle_blocks_auto_is_global_locally_and_8_shards_over_s3():
    def blocks(path, value="auto"):
        return validate_section(DataConfig, {"path": path, "seq_len": 8,
                                             "shuffle_block_shards": value}, "data").block_shards()

    assert blocks("data/x") == 0 and blocks("s3://bucket/x") == 8
    mix = [{"path": "data/x", "weight": 1}, {"path": "s3://bucket/y", "weight": 1}]
    assert blocks(mix) == 8 and blocks("s3://bucket/x", 0) == 0 and blocks("data/x", 3) == 3
    with pytest.raises(ConfigError, match="data.shuffle_block_shards"):
        blocks("data/x", -1)
