"""Checkpoint bookkeeping without a process group: completeness, fallback, pruning, RNG state,
refusal on shape/fingerprint change, metrics truncation on resume, unigram entropy."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from pretrain.data.synthetic import docs_from_lists, write_folder
from pretrain.train import checkpoint as ckpt
from pretrain.train.metrics import truncate_metrics
from pretrain.train.stats import unigram_entropy


def fake_checkpoint(root, step, complete=True):
    tag_dir = root / ckpt.tag_for(step)
    tag_dir.mkdir(parents=True)
    (tag_dir / "model.pt").write_bytes(b"x" * step)
    files = {"model.pt": step, "rng_rank0.pt": 1}
    (tag_dir / "rng_rank0.pt").write_bytes(b"r")
    if complete:
        (tag_dir / ckpt.META).write_text(json.dumps({"step": step, "files": files}))
    return tag_dir


def test_latest_incomplete_falls_back_and_missing_part_is_never_loaded(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    assert ckpt.find_resume_tag(tmp_path) is None  # no `latest`: fresh start
    ckpt.write_atomic(tmp_path / ckpt.LATEST, "step_00000004\n")
    assert ckpt.find_resume_tag(tmp_path) == "step_00000004"
    (tmp_path / "step_00000004" / "rng_rank0.pt").unlink()  # a part went missing
    assert not ckpt.is_complete(tmp_path / "step_00000004")
    assert ckpt.find_resume_tag(tmp_path) == "step_00000002"
    (tmp_path / "step_00000002" / "model.pt").write_bytes(b"short")  # truncated file
    assert ckpt.find_resume_tag(tmp_path) is None


def test_prune_keeps_the_newest_complete(tmp_path):
    for s in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, s)
    fake_checkpoint(tmp_path, 5, complete=False)  # a newer partial save is left alone
    ckpt.prune(tmp_path, keep_last=2, keep="step_00000004")
    assert ckpt.list_tags(tmp_path) == ["step_00000003", "step_00000004", "step_00000005"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_refuses_changed_shapes_or_data_naming_the_difference(tmp_path):
    meta = {"param_shapes": {"w": [4, 8], "b": [8]}, "data_fingerprint": "a" * 64,
            "world_size": 2, "config": {"deepspeed": {"zero_stage": 2}}}
    ckpt.check_compatible(meta, {"w": [4, 8], "b": [8]}, "a" * 64, tmp_path, 2, 2)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.check_compatible(meta, {"w": [4, 16], "b": [8], "c": [2]}, "b" * 64, tmp_path, 2, 2)
    text = str(err.value)
    assert "parameter w: checkpoint [4, 8], config [4, 16]" in text
    assert "parameter c: checkpoint None, config [2]" in text
    assert "data fingerprint" in text and str(tmp_path) in text


def test_zero_checkpoint_resumes_only_on_the_ranks_and_stage_that_saved_it(tmp_path):
    meta = {"param_shapes": {"w": [4]}, "data_fingerprint": "a" * 64, "world_size": 2,
            "config": {"deepspeed": {"zero_stage": 2}}}
    with pytest.raises(ckpt.CheckpointError, match="written by 2 ranks at ZeRO-2, this run has 1"):
        ckpt.check_compatible(meta, {"w": [4]}, "a" * 64, tmp_path, 1, 2)
    with pytest.raises(ckpt.CheckpointError, match="zero_stage: checkpoint 2, config 3"):
        ckpt.check_compatible(meta, {"w": [4]}, "a" * 64, tmp_path, 2, 3)
    meta["config"]["deepspeed"]["zero_stage"] = 0  # ZeRO-0: any number of ranks
    ckpt.check_compatible(meta, {"w": [4]}, "a" * 64, tmp_path, 1, 0)


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(rows) + '\n{"step": 5, "lo')  # a line cut by kill -9
    truncate_metrics(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_unigram_entropy_of_known_counts(tmp_path):
    # train: tokens 5,5,6 and 7 in two documents (+ one EOS each): p = 2/6, 1/6, 1/6, 2/6.
    docs = docs_from_lists([[5, 5, 6], [7]])
    write_folder(tmp_path, {"train": [docs], "val": [docs]}, vocab_size=16)
    ent = unigram_entropy(tmp_path)
    p = np.array([2, 1, 1, 2]) / 6
    assert ent.tokens == 6
    assert ent.nats_per_token == pytest.approx(float(-(p * np.log(p)).sum()))
    assert ent.bits_per_token == pytest.approx(ent.nats_per_token / math.log(2))
