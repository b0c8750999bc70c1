"""pretrain/train/reshard.py without processes: when a resume goes through the universal
checkpoint, the Adam step counters a ZeRO-3 universal load shares, and which leftover temp
folders of a killed conversion are removed, a tampered universal copy. (The conversion and the resumes themselves run for
real in test_world_size_change.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers.tamper import payload_is_live, write_payload

from data_tools.atomic import write_atomic
from pretrain.train import reshard
from pretrain.train.checkpoint import CheckpointError, file_record
from pretrain.train.checkpoint_meta import META, CheckpointMeta


def meta(world: int, stage: int) -> CheckpointMeta:
    return CheckpointMeta(step=4, consumed_samples=32, data_fingerprint="f" * 64,
                          param_shapes={}, world_size=world,
                          config={"deepspeed": {"zero_stage": stage}})


def test_universal_only_for_zero_1_to_3_on_other_ranks_or_stage():
    assert not reshard.needs_universal(meta(2, 2), 2, 2)  # same layout: loads as saved
    assert not reshard.needs_universal(meta(2, 0), 1, 0)  # ZeRO-0: every rank has it all
    assert reshard.needs_universal(meta(2, 2), 1, 2)
    assert reshard.needs_universal(meta(1, 3), 2, 3)
    assert reshard.needs_universal(meta(2, 1), 2, 3)
    assert reshard.describe(meta(2, 1), 4, 3) == "re-shard from 2 to 4 ranks, ZeRO-1 to ZeRO-3"


def test_the_stage_rule_is_the_one_resume_applies():
    """A stage changes only among ZeRO 1-3 (the universal checkpoint); resume.py refuses the
    rest with reshard's rule, not a copy of it."""
    from pretrain.train.resume import _partition_problems
    for old in range(4):
        for new in range(4):
            carried = reshard.through_universal(old, new)
            assert carried == (old != 0 and new != 0)
            assert (not _partition_problems(meta(2, old), new)) == (old == new or carried)


def test_shared_adam_step_counters_are_untied():
    """One step tensor shared by two param groups' states (what DeepSpeed's ZeRO-3 universal
    load leaves) counts twice per step in torch's AdamW; untied, each counts once."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b]}], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    shared = torch.tensor(5.0)
    opt.state[a]["step"] = opt.state[b]["step"] = shared
    opt.step()
    assert opt.state[a]["step"].item() == 7.0  # the bug: two increments of one counter
    opt.state[a]["step"] = opt.state[b]["step"] = shared
    reshard.untie_adam_steps(opt)
    opt.step()
    assert [opt.state[p]["step"].item() for p in (a, b)] == [8.0, 8.0]


def test_leftovers_of_dead_conversions_are_removed_live_ones_kept(tmp_path):
    name = "step_00000004_universal"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".{name}.tmp999999999"
        running = tmp_path / f".{name}.tmp{live.pid}"
        mine = tmp_path / f".{name}.tmp{os.getpid()}"  # an earlier try of this process
        other = tmp_path / ".step_00000008_universal.tmp999999999"
        for p in (dead, running, mine, other):
            p.mkdir()
        reshard._remove_leftovers(tmp_path, name)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])
    finally:
        live.kill()
        live.wait()


def test_a_tampered_universal_copy_is_refused_not_loaded_nor_replaced(tmp_path):
    """A universal copy whose file names code (hashes re-recorded, as an attacker would) stops
    the resume naming the file; nothing is unpickled, the folder is left for inspection."""
    ckpt_dir, marker = tmp_path / "checkpoints", tmp_path / "pwned"
    folder = ckpt_dir / "step_00000004_universal"
    (folder / "zero" / "w").mkdir(parents=True)
    victim = folder / "zero" / "w" / "exp_avg.pt"
    write_payload(victim, marker)
    assert payload_is_live(victim, marker)
    files = {"zero/w/exp_avg.pt": file_record(victim)}
    write_atomic(folder / META, meta(2, 2).model_copy(update={
        "files": files, "converted_from": "step_00000004"}).model_dump_json())
    with pytest.raises(CheckpointError) as err:
        reshard.convert(ckpt_dir, "step_00000004", meta(2, 2))
    assert f"refusing to use {folder}" in str(err.value)
    assert f"{victim}: it holds a pickled reference to `posix.system`" in str(err.value)
    assert not marker.exists() and victim.is_file()
