"""T5 span corruption: lengths as T5's random_spans_helper, exact reconstruction, density."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.data import DataConfig, DataError
from pretrain.data.span import span_lengths
from pretrain.objectives import open_data

SENTINEL_LO = 400


def test_lengths_match_t5_random_spans_helper():
    # t5.data.preprocessors.random_spans_helper(512, 0.15, 3.0) == (568, 114), as in T5's docs
    lens = span_lengths(512, 0.15, 3.0)
    assert (lens.raw_length, lens.targets_length) == (568, 114)
    assert lens.inputs_length == 512


def reconstruct(inputs: np.ndarray, targets: np.ndarray, eos: int) -> tuple[list, list]:
    """Put each target span back in place of its sentinel; also return the sentinels seen."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans, seen, current = {}, [], None
    for t in targets[:-1].tolist():
        if t >= SENTINEL_LO:
            current = t
            seen.append(t)
            spans[t] = []
        else:
            spans[current].append(t)
    out, in_sentinels = [], []
    for t in inputs[:-1].tolist():
        if t >= SENTINEL_LO:
            in_sentinels.append(t)
            out += spans[t]
        else:
            out.append(t)
    assert in_sentinels == seen
    return out, seen


def test_span_corruption_reconstructs_exactly(t5):
    lens, n = t5.objective.span, t5.num_samples("train")
    stream = t5.folders[0].streams["train"]
    densities = []
    for i in range(n):
        s = t5.sample("train", i)
        assert s["input_ids"].shape == (48,) and s["attention_mask"].shape == (48,)
        assert s["targets"].shape == (16,) and s["decoder_input_ids"].shape == (16,)
        real = s["attention_mask"]
        assert real.sum() == lens.inputs_length and real[: lens.inputs_length].all()
        tgt = s["targets"][s["targets"] != -100]
        assert len(tgt) == lens.targets_length and (s["targets"][len(tgt):] == -100).all()
        raw, _ = stream.windows(np.array([i * lens.raw_length]), lens.raw_length)
        out, sentinels = reconstruct(s["input_ids"][real], tgt, t5.eos_id)
        assert out == raw[0].tolist()
        assert sentinels == list(range(SENTINEL_LO, SENTINEL_LO + len(sentinels)))  # in order
        densities.append((len(tgt) - 1 - len(sentinels)) / lens.raw_length)
        assert s["decoder_input_ids"][0] == t5.pad_id
        np.testing.assert_array_equal(s["decoder_input_ids"][1: len(tgt)], tgt[:-1])
    assert abs(np.mean(densities) - 0.15) <= 0.02
    assert lens.num_spans == 3                          # several sentinels per sample


def test_noise_is_keyed_by_seed_index_and_epoch(t5, folder):
    a, b = t5.sample("train", 5), t5.sample("train", 6)
    assert not np.array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(a["input_ids"], t5.sample("train", 5)["input_ids"])
    assert not np.array_equal(a["targets"], t5.sample("train", 5, epoch=1)["targets"])
    other_seed = open_data(t5.config, seed=2)
    assert not np.array_equal(a["targets"], other_seed.sample("train", 5)["targets"])


def test_longer_span_config_and_refusals(folder):
    cfg = dict(path=str(folder), objective="span_corruption")
    src = open_data(DataConfig(**cfg, input_length=64, mean_span_length=2.0), seed=0)
    assert src.sample("val", 0)["input_ids"].shape == (64,)
    with pytest.raises(DataError, match=r"target_length \(5\) is too short"):
        open_data(DataConfig(**cfg, input_length=64, target_length=5), seed=0)
    with pytest.raises(DataError, match="sentinel ids, the tokenizer of .* has 112"):
        open_data(DataConfig(**cfg, input_length=3000), seed=0)
