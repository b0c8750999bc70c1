"""What a resume may change (pretrain/train/resume.py), without processes: refusals name every
change (shapes, data folders and weights, order-deciding keys, precision, ZeRO layout, a global
batch that does not divide the consumed samples); kept changes come back key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.configlib import config_changes
from pretrain.train.checkpoint import CheckpointError
from pretrain.train.checkpoint_meta import CheckpointMeta, DataFolderRecord
from pretrain.train.config import build_run_config, config_to_dict
from pretrain.train.resume import check_resume

BASE = {
    "run_dir": "/runs/x",
    "model": {"family": "decoder", "max_seq_len": 32, "d_model": 32, "n_heads": 4, "n_layers": 1},
    "data": {"path": "/data/a", "seq_len": 32},
    "train": {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 2},
    "deepspeed": {"zero_stage": 1},
}
SHAPES = {"w": [4, 8], "b": [8]}
FOLDERS = [DataFolderRecord(path="/data/a", weight=1.0, fingerprint="f" * 64)]


def cfg(**changes):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    return build_run_config(raw)


def meta(consumed: int = 48, world: int = 2, **kw) -> CheckpointMeta:
    return CheckpointMeta(step=6, consumed_samples=consumed, data_fingerprint="f" * 64,
                          data_folders=FOLDERS, param_shapes=SHAPES, world_size=world,
                          config=config_to_dict(kw.pop("config", cfg())), **kw)


def check(new, m=None, shapes=SHAPES, fp="f" * 64, folders=FOLDERS):
    return check_resume(m or meta(), new, shapes, fp, folders, Path("/ck/step_00000006"))


def refusal(*args, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        check(*args, **kw)
    assert "cannot resume from /ck/step_00000006" in str(err.value)
    assert "Nothing in the run folder was changed" in str(err.value)
    return str(err.value)


def test_unchanged_config_resumes_silently():
    assert check(cfg()) == []


def test_hyperparameter_changes_are_kept_and_listed_old_to_new():
    changes = check(cfg(optim__lr=1e-3, train__max_steps=20, schedule__name="wsd",
                        train__global_batch_size=16, model__dropout=0.2))
    assert ("optim.lr", 3e-4, 1e-3) in changes
    assert ("train.max_steps", 10, 20) in changes
    assert ("schedule.name", "cosine", "wsd") in changes
    assert ("train.global_batch_size", 8, 16) in changes  # 48 samples = 3 steps of 16
    assert ("model.dropout", 0.0, 0.2) in changes


def test_a_global_batch_that_does_not_divide_the_consumed_samples_is_refused():
    text = refusal(cfg(train__global_batch_size=32))
    assert "train.global_batch_size: 8 → 32, but the checkpoint consumed 48 samples" in text


def test_data_changes_name_folders_weights_and_contents():
    mix = [DataFolderRecord(path="/data/a", weight=0.75, fingerprint="f" * 64),
           DataFolderRecord(path="/data/b", weight=0.25, fingerprint="e" * 64)]
    text = refusal(cfg(data__path=[{"path": "/data/a", "weight": 3}, {"path": "/data/b",
                                                                       "weight": 1}]),
                   fp="9" * 64, folders=mix)
    assert "data folder /data/b is new" in text
    assert "data folder /data/a: weight 1 → 0.75" in text
    text = refusal(cfg(), fp="9" * 64,
                   folders=[DataFolderRecord(path="/data/a", weight=1.0, fingerprint="9" * 64)])
    assert "data folder /data/a: its contents changed (manifest fingerprint ffffffffffff… → " \
           "999999999999…)" in text
    # The same shards under another path: nothing that decides the samples changed.
    moved = [DataFolderRecord(path="/mnt/a", weight=1.0, fingerprint="f" * 64)]
    assert check(cfg(data__path="/mnt/a"), folders=moved) == [("data.path", "/data/a", "/mnt/a")]


def test_order_deciding_keys_precision_shapes_and_zero_layout_are_refused():
    text = refusal(cfg(seed=7, data__seq_len=16, data__shuffle=False, precision="bf16"),
                   shapes={"w": [4, 16], "b": [8], "c": [2]})
    for part in ("seed: 1234 → 7", "data.seq_len: 32 → 16", "data.shuffle: True → False",
                 "precision: checkpoint fp32, config bf16",
                 "parameter w: checkpoint [4, 8], config [4, 16]",
                 "parameter c: checkpoint None, config [2]"):
        assert part in text, part
    text = refusal(cfg(deepspeed__zero_stage=0))
    assert "deepspeed.zero_stage: checkpoint 1, config 0 (ZeRO-0 keeps" in text
    assert "resume at ZeRO-1 — on any number of ranks" in text
    assert "deepspeed.offload_optimizer: checkpoint False, config True" in refusal(
        cfg(deepspeed__offload_optimizer=True))
    zero0 = meta(config=cfg(deepspeed__zero_stage=0))
    assert "checkpoint 0, config 2" in refusal(cfg(deepspeed__zero_stage=2), m=zero0)


def test_a_change_of_shuffle_blocks_is_refused_and_an_older_checkpoint_ran_global():
    """data.shuffle_block_shards decides the order (pre-flight resolves "auto" to a number, so
    a local folder copied to s3:// under auto is refused too); a checkpoint written before the
    key existed shuffled globally (0)."""
    global0 = meta(config=cfg(data__shuffle_block_shards=0))
    assert "data.shuffle_block_shards: 0 → 8 (decides which samples" in refusal(
        cfg(data__shuffle_block_shards=8), m=global0)
    older = config_to_dict(cfg(data__shuffle_block_shards=0))
    del older["data"]["shuffle_block_shards"]
    assert check(cfg(data__shuffle_block_shards=0), m=meta(config=cfg())
                 .model_copy(update={"config": older})) == []
    assert "data.shuffle_block_shards: 0 → 8" in refusal(
        cfg(data__shuffle_block_shards=8), m=meta(config=cfg()).model_copy(
            update={"config": older}))


def test_another_rank_count_or_a_zero_stage_among_1_to_3_resumes():
    """The rank count is not checked here (any ZeRO 0-3 checkpoint resumes on any number of
    ranks; reshard.py); a stage changes among 1-3 (the universal checkpoint), never from or to
    ZeRO-0."""
    for old in (0, 1, 2, 3):
        for new in (0, 1, 2, 3):
            m = meta(world=4, config=cfg(deepspeed__zero_stage=old))
            if old == new or 0 not in (old, new):
                got = check(cfg(deepspeed__zero_stage=new), m=m)
                assert got == ([] if old == new else [("deepspeed.zero_stage", old, new)])
            else:
                text = refusal(cfg(deepspeed__zero_stage=new), m=m)
                assert f"deepspeed.zero_stage: checkpoint {old}, config {new} (ZeRO-0" in text


def test_config_changes_flatten_nested_keys():
    assert config_changes({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"b": 2, "c": [1]}}) == [
        ("a.b", 1, 2), ("d", 2, "<unset>")]
