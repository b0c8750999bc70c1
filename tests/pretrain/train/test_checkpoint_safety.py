"""Checkpoints against an adversarial user, with real DeepSpeed on 2 gloo ranks: a tampered file
never runs code (resume, export, sample) and a refused resume changes nothing; damaged files
(same-size garbage, one flipped byte) and a missing `latest` fall back to the last good
checkpoint and the run still matches the uninterrupted one bit for bit; evaluation never costs a
checkpoint; changed hyperparameters are named and take effect; a second run in one folder is
refused naming the first; a full disk while saving ends cleanly with `latest` intact."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import torch
from helpers.disks import assert_step_6_save_ran_out_of_room
from helpers.dist import run_ranks, start_ranks
from helpers.tamper import payload_is_live, snapshot, write_payload

from pretrain.train import checkpoint as ckpt
from pretrain.train import checkpoint_meta as cm


def rerecord(tag_dir: Path, name: str) -> None:
    """Make meta.json vouch for the file as it is now (size and hash), as an attacker would."""
    meta = cm.read_meta(tag_dir)
    meta.files[name] = ckpt.file_record(tag_dir / name)
    (tag_dir / cm.META).write_text(meta.model_dump_json(indent=1))


def test_tampered_file_never_runs_code_on_resume_export_or_sample(straight_run, runs,
                                                                  tiny_data, tmp_path, cli):
    from arrowtrain.commands.export import main as export_main
    from arrowtrain.commands.sample import main as sample_main

    run, marker = tmp_path / "run", tmp_path / "PWNED"
    runs.copy_run(straight_run(1), run)
    tag_dir = run / "checkpoints" / "step_00000008"
    victim = tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt"  # loaded by rank 1 only
    write_payload(victim, marker)
    assert payload_is_live(victim, marker)
    rerecord(tag_dir, victim.name)
    before = snapshot(run)

    ranks = run_ranks(runs.small_run_args(run, tiny_data, 1), tmp_path / "logs", expect=2)
    logs = ranks.logs(10**6)
    assert f"refusing to load checkpoint {tag_dir}:\n" in logs
    assert f"{victim}: it holds a pickled reference to `posix.system`" in logs
    assert logs.count(str(victim)) == 1  # one message (rank 0 speaks for both)
    assert "Traceback" not in logs and not marker.exists()

    export = cli(export_main, run, "--out", tmp_path / "m.safetensors")
    sample = cli(sample_main, run, "--prompt", "the")
    for res in (export, sample):
        assert res.code == 2, res.err
        assert res.err.count(str(victim)) == 1 and "posix.system" in res.err
        assert "Traceback" not in res.err and res.out == ""
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()
    assert snapshot(run) == before  # the refused resume changed nothing (not even config.yaml)


def test_damaged_checkpoints_and_missing_latest_fall_back_and_resume_exactly(
        straight_run, runs, tiny_data, tmp_path):
    reference = straight_run(1)
    run = runs.copy_run(reference, tmp_path / "run")
    ck = run / "checkpoints"
    assert cm.list_tags(ck) == ["step_00000003", "step_00000006", "step_00000008"]
    (ck / cm.LATEST).unlink()
    rng = ck / "step_00000008" / "rng_rank1.pt"  # same-size garbage
    rng.write_bytes(random.Random(1).randbytes(rng.stat().st_size))
    optim = ck / "step_00000006" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(optim.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10  # one flipped bit inside a tensor
    optim.write_bytes(bytes(data))

    ranks = run_ranks(runs.small_run_args(run, tiny_data, 1), tmp_path / "logs")
    logs = ranks.logs(10**6)
    assert f"{ck / cm.LATEST} is missing" in logs
    fallback = "checkpoint {} is incomplete or damaged, falling back to {}:\n"
    assert fallback.format(ck / "step_00000008", "step_00000006") in logs
    assert "rng_rank1.pt: its sha256 differs from meta.json's" in logs
    assert fallback.format(ck / "step_00000006", "step_00000003") in logs
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt: its sha256 differs" in logs
    assert f"resumed from {ck / 'step_00000003'} at step 3" in logs
    assert runs.train_losses(run) == runs.train_losses(reference)
    val = [r["val_loss"] for r in runs.read_metrics(run) if "val_loss" in r]
    assert val == [r["val_loss"] for r in runs.read_metrics(reference) if "val_loss" in r]
    for tag in cm.list_tags(ck):  # the damaged ones were rewritten whole on the way
        assert ckpt.choose_checkpoint(ck, [tag]) is not None


EVAL_FAILS = """
import sys
import pretrain.train.loop as loop
from pretrain.train.__main__ import main

def evaluate(self):
    raise RuntimeError(f"evaluation failed at step {self.step}")

loop.Trainer.evaluate = evaluate
sys.exit(main(sys.argv[1:]))
"""


def test_evaluation_failure_keeps_the_checkpoint_due_at_the_same_step(runs, tiny_data,
                                                                     tmp_path):
    run = tmp_path / "run"
    args = runs.small_run_args(run, tiny_data, 0, "checkpoint.every_steps=2")[2:]  # no -m
    ranks = run_ranks(["-c", EVAL_FAILS, *args], tmp_path / "logs", world_size=1, expect=1)
    assert "evaluation failed at step 4" in ranks.logs(10**6)
    ck = run / "checkpoints"
    assert (ck / cm.LATEST).read_text().strip() == "step_00000004"  # saved before evaluating
    assert ckpt.choose_checkpoint(ck, ["step_00000004"])[1].step == 4


def test_changed_hyperparameters_are_named_and_take_effect(straight_run, runs, tiny_data,
                                                           tmp_path):
    run = runs.copy_run(straight_run(0), tmp_path / "run")
    ranks = run_ranks(runs.small_run_args(run, tiny_data, 0, "train.max_steps=12",
                                          "optim.lr=1e-3", "train.global_batch_size=16"),
                      tmp_path / "logs")
    logs = ranks.logs(10**6)
    for change in ("optim.lr: 0.003 → 0.001", "train.max_steps: 8 → 12",
                   "train.global_batch_size: 8 → 16"):
        assert change in logs, change
    rows = [r for r in runs.read_metrics(run) if "loss" in r]
    assert [r["consumed_samples"] for r in rows] == [8 * s for s in range(1, 9)] + [
        64 + 16 * k for k in range(1, 5)]  # 8 steps of 8, then steps of 16
    states = torch.load(run / "checkpoints" / "step_00000012" / "mp_rank_00_model_states.pt",
                        weights_only=True)
    sched = states["lr_scheduler"]
    assert sched["base_lrs"] == [1e-3, 1e-3]  # the restored 3e-3 was replaced
    assert {fn["max_steps"] for fn in sched["lr_lambdas"]} == {12}
    assert cm.read_meta(run / "checkpoints" / "step_00000012").config["optim"]["lr"] == 1e-3


def test_second_run_in_the_same_folder_exits_2_naming_the_first(runs, tiny_data, tmp_path):
    run = tmp_path / "run"
    args = runs.small_run_args(run, tiny_data, 0, "train.max_steps=100000")
    first = start_ranks(args, tmp_path / "logs_first")
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").is_file():  # training: the lock is held
            assert time.monotonic() < deadline and all(p.poll() is None for p in first.procs), \
                first.logs()
            time.sleep(0.1)
        second = run_ranks(args, tmp_path / "logs_second", expect=2)
        logs = second.logs(10**6)
        assert (f"run folder {run} is in use by another run: host "
                f"{os.uname().nodename}, pid {first.procs[0].pid}") in logs
        assert logs.count("is in use by another run") == 1 and "Traceback" not in logs
        assert all(p.poll() is None for p in first.procs)  # the first run goes on
    finally:
        first.procs[0].send_signal(signal.SIGUSR1)
        codes = first.wait(240)
    assert codes == [75, 75], first.logs()
    steps = [s for s, _ in runs.train_losses(run)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaved rows
    assert not (run / "run.lock").exists()


def test_disk_full_while_saving_ends_cleanly_with_latest_intact(small_disk, runs, tiny_data,
                                                               tmp_path):
    run = small_disk / "run"
    ranks = run_ranks(runs.small_run_args(run, tiny_data, 1), tmp_path / "logs", expect=1)
    logs = ranks.logs(10**6)
    assert re.search(r"only \d\.\d MB free for .*; a checkpoint is ≈ 2\.2 MB \(estimated from "
                     r"136,960 parameters\)", logs), logs
    ck = run / "checkpoints"
    assert_step_6_save_ran_out_of_room(logs, ck)
