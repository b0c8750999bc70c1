"""Checkpoint bookkeeping without a process group: completeness, `latest` missing/empty/dangling,
hashes (same-size damage falls back), pruning, RNG state, size estimate, metrics truncation on
resume, unigram entropy."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from data_tools.atomic import write_atomic
from pretrain.data.synthetic import docs_from_lists, write_folder
from pretrain.train import checkpoint as ckpt
from pretrain.train import checkpoint_meta as cm
from pretrain.train.metrics import truncate_metrics
from pretrain.train.stats import unigram_entropy


def fake_meta(step: int, files: dict[str, cm.FileRecord] | None = None, **extra):
    return cm.CheckpointMeta(
        format_version=cm.META_FORMAT, step=step, consumed_samples=8 * step,
        data_fingerprint="a" * 64, param_shapes={"w": [4]}, world_size=1,
        config={"deepspeed": {"zero_stage": 0}}, files=files or {}, **extra)


def fake_checkpoint(root, step, complete=True):
    """A checkpoint folder with two real torch.save files (tensors only) and a valid meta."""
    tag_dir = root / cm.tag_for(step)
    tag_dir.mkdir(parents=True)
    torch.save({"module": {"w": torch.full((4,), float(step))}}, tag_dir / "model.pt")
    torch.save(ckpt.rng_state(), tag_dir / "rng_rank0.pt")
    if complete:
        files = {p.name: ckpt.file_record(p) for p in sorted(tag_dir.iterdir())}
        (tag_dir / cm.META).write_text(fake_meta(step, files).model_dump_json())
    return tag_dir


def test_latest_incomplete_falls_back_and_missing_part_is_never_loaded(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    write_atomic(tmp_path / cm.LATEST, "step_00000004\n")
    assert cm.find_resume_tag(tmp_path) == "step_00000004"
    (tmp_path / "step_00000004" / "rng_rank0.pt").unlink()  # a part went missing
    assert not cm.is_complete(tmp_path / "step_00000004")
    assert cm.find_resume_tag(tmp_path) == "step_00000002"
    model = tmp_path / "step_00000002" / "model.pt"
    model.write_bytes(model.read_bytes()[:-1])  # truncated file
    assert cm.find_resume_tag(tmp_path) is None


@pytest.mark.parametrize("latest", [None, "", "step_00000077\n"])
def test_latest_missing_empty_or_dangling_resumes_from_the_newest_by_step_number(
        tmp_path, caplog, latest):
    for step in (99_999_999, 100_000_000, 5):  # "step_100000000" < "step_99999999" as strings
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 100_000_001, complete=False)  # newest folder, but partial
    if latest is not None:
        (tmp_path / cm.LATEST).write_text(latest)
    assert cm.list_tags(tmp_path)[-2:] == ["step_100000000", "step_100000001"]
    assert cm.find_resume_tag(tmp_path) == "step_100000000"
    why = {None: "is missing", "": "is empty", "step_00000077\n": "names 'step_00000077', "
           "which is not there"}[latest]
    assert cm.resume_order(tmp_path)[1] == f"{tmp_path / cm.LATEST} {why}"
    with caplog.at_level(logging.WARNING):  # the trainer says why it does not follow `latest`
        assert cm.resume_candidates(tmp_path)[:2] == ["step_100000001", "step_100000000"]
    assert f"{tmp_path / cm.LATEST} {why}" in caplog.text
    assert cm.find_resume_tag(tmp_path / "nothing") is None  # no folder: a fresh start


def _verify(root, tag):
    return ckpt.choose_checkpoint(root, [tag], none_left="nothing")


@pytest.mark.parametrize("damage", ["garbage_model", "garbage_rng", "flipped_byte", "meta"])
def test_same_size_damage_is_found_by_the_hash_and_falls_back(tmp_path, caplog, damage):
    fake_checkpoint(tmp_path, 2)
    tag_dir = fake_checkpoint(tmp_path, 4)
    write_atomic(tmp_path / cm.LATEST, "step_00000004\n")
    name = {"garbage_model": "model.pt", "garbage_rng": "rng_rank0.pt",
            "flipped_byte": "model.pt", "meta": cm.META}[damage]
    path = tag_dir / name
    data = bytearray(path.read_bytes())
    if damage.startswith("garbage"):
        data = bytearray(random.Random(0).randbytes(len(data)))
    elif damage == "flipped_byte":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[:-20]  # meta.json cut short
    path.write_bytes(bytes(data))
    assert cm.is_complete(tag_dir) == (damage != "meta")  # sizes alone do not see it
    with caplog.at_level(logging.WARNING):
        found = ckpt.choose_checkpoint(tmp_path, cm.resume_candidates(tmp_path))
    assert found[0] == "step_00000002" and found[1].step == 2
    assert (f"checkpoint {tag_dir} is incomplete or damaged, falling back to step_00000002"
            in caplog.text)
    reason = "is not a valid checkpoint record" if damage == "meta" else "sha256 differs"
    assert f"{name}: " in caplog.text and reason in caplog.text


def test_a_format_1_meta_without_hashes_is_still_read(tmp_path):
    tag_dir = fake_checkpoint(tmp_path, 3)
    old = json.loads((tag_dir / cm.META).read_text())
    old["files"] = {k: v["bytes"] for k, v in old["files"].items()}
    del old["format_version"], old["data_folders"]
    (tag_dir / cm.META).write_text(json.dumps(old))
    meta = cm.read_meta(tag_dir)
    assert meta.format_version == 1 and meta.files["model.pt"].sha256 is None
    assert _verify(tmp_path, "step_00000003")[1].step == 3  # sizes + weights-only probe


def test_prune_keeps_the_newest_complete(tmp_path):
    for s in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, s)
    fake_checkpoint(tmp_path, 5, complete=False)  # a newer partial save is left alone
    ckpt.prune(tmp_path, keep_last=2, keep="step_00000004")
    assert cm.list_tags(tmp_path) == ["step_00000003", "step_00000004", "step_00000005"]


def test_owner_rank_of_deepspeed_files():
    world = 4
    assert ckpt.owner_rank("zero_pp_rank_3_mp_rank_00_optim_states.pt", world) == 3
    assert ckpt.owner_rank("bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt", world) == 2
    assert ckpt.owner_rank("zero_pp_rank_1_mp_rank_00_model_states.pt", world) == 1
    assert ckpt.owner_rank("rng_rank3.pt", world) == 3
    assert ckpt.owner_rank("rng_rank5.pt", world) == 1  # saved by more ranks than now
    assert ckpt.owner_rank("mp_rank_00_model_states.pt", world) == 0


def test_checkpoint_size_estimate_from_parameters():
    n = 136_960  # gpt-tiny; real ZeRO-1 fp32 checkpoint: 2,217,315 bytes without RNG files
    assert ckpt.estimate_bytes(n, "fp32", 1) == n * 16
    assert ckpt.estimate_bytes(n, "fp32", 0) == n * 12
    assert ckpt.estimate_bytes(n, "bf16", 0) == ckpt.estimate_bytes(n, "bf16", 3) == n * 14
    assert ckpt.human_bytes(2_217_315) == "2.2 MB" and ckpt.human_bytes(3.5e9) == "3.50 GB"


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


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
