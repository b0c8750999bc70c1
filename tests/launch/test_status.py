"""`launch status` on a run folder written by hand (no job): checkpoint, metrics, ETA."""

from __future__ import annotations

import json
import subprocess
import sys

from launch.common import REPO
from launch.status import collect
from pretrain.train.checkpoint_meta import CheckpointMeta, FileRecord, tag_for


def write_checkpoint(ckpt_dir, step: int, world_size: int = 4, complete: bool = True) -> None:
    """A checkpoint folder as the trainer leaves it: one file and the meta.json that lists it
    (a file shorter than recorded when not `complete`)."""
    tag_dir = ckpt_dir / tag_for(step)
    tag_dir.mkdir(parents=True)
    (tag_dir / "model.pt").write_bytes(b"x" * (8 if complete else 3))
    meta = CheckpointMeta(step=step, consumed_samples=8 * step, data_fingerprint="f",
                          param_shapes={"w": [2]}, world_size=world_size,
                          config={"deepspeed": {"zero_stage": 2}},
                          files={"model.pt": FileRecord(bytes=8)})
    (tag_dir / "meta.json").write_text(meta.model_dump_json())


def test_status_reads_checkpoint_metrics_and_eta(tmp_path):
    write_checkpoint(tmp_path / "checkpoints", 40)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000040\n")
    (tmp_path / "config.yaml").write_text("train:\n  max_steps: 100\n")
    rows = [{"step": s, "loss": 5.0 - s / 100, "step_time_ms": 200.0} for s in range(1, 51)]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 51, "lo')  # a line cut short by a kill is ignored
    info = collect(tmp_path)
    assert info["checkpoint"] == "step_00000040"
    assert info["checkpoint_layout"] == {"ranks": 4, "zero_stage": 2, "universal_copy": False}
    assert info["last_metrics"]["step"] == 50
    assert info["eta_s"] == 50 * 0.2
    assert "job" not in info
    res = subprocess.run([sys.executable, "-m", "launch", "status", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "step_00000040 (written by 4 ranks at ZeRO-2; resumes on any number of ranks)" \
        in res.stdout and "time left when resumed: < 1 min" in res.stdout
    assert "state: stopped" in res.stdout


def test_status_names_the_checkpoint_the_trainer_resumes_from(tmp_path):
    """`latest` gone (or naming nothing): the trainer takes the newest complete step_* folder,
    and so does status (one function, checkpoint_meta.find_resume_tag), saying why."""
    ckpt_dir = tmp_path / "checkpoints"
    write_checkpoint(ckpt_dir, 4, world_size=2)
    write_checkpoint(ckpt_dir, 8, world_size=1)
    write_checkpoint(ckpt_dir, 12, complete=False)  # cut short by a kill: skipped
    info = collect(tmp_path)
    assert (info["checkpoint"], info["step"], info["checkpoint_world_size"]) == \
        ("step_00000008", 8, 1)
    assert info["state"] == "stopped" and info["why"].endswith("resumes from step_00000008")
    assert info["checkpoint_note"] == f"{ckpt_dir / 'latest'} is missing"
    (ckpt_dir / "latest").write_text("step_00000004\n")  # followed, as the trainer does
    info = collect(tmp_path)
    assert (info["checkpoint"], info["checkpoint_note"]) == ("step_00000004", None)


def test_status_of_missing_folder_is_an_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "launch", "status", str(tmp_path / "nope")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no such folder" in res.stderr


def test_failure_reason_keeps_the_lines_that_continue_an_error(tmp_path):
    from launch.status import failure_reason

    (tmp_path / "job-7.out").write_text(
        "0: 05:00:00 [rank 0 n1] INFO pretrain.train: rank 0/2 starting\n"
        "0: 05:00:01 [rank 0 n1] ERROR pretrain.train: 1 config problem(s) in c.yaml:\n"
        "0:   - data.path /data/gone: no such folder\n"
        "0: 05:00:01 [rank 0 n1] INFO pretrain.train: rank 0 exiting\n"
        "[launch ...] FAILED: training exited with code 2 (config or data error)\n")
    assert failure_reason(tmp_path, "7") == [
        "0: 05:00:01 [rank 0 n1] ERROR pretrain.train: 1 config problem(s) in c.yaml:",
        "0:   - data.path /data/gone: no such folder",
        "[launch ...] FAILED: training exited with code 2 (config or data error)"]


def test_status_shows_measured_and_planned_memory(tmp_path):
    from launch.status import _format

    rows = [{"step": 1, "loss": 5.0, "memory_planned_bytes": 2**30},
            {"step": 3, "loss": 4.0, "memory_planned_bytes": 2**30,
             "memory_peak_bytes": 2**30 + 2**28},
            {"step": 4, "val_loss": 4.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = collect(tmp_path)
    assert info["memory"] == {"planned_bytes": 2**30, "peak_bytes": 2**30 + 2**28}
    assert "memory per rank: peak 1.250 GiB, planned 1.000 GiB (measured/planned 1.25)" \
        in _format(info)


def test_remote_timeout_must_be_positive_and_its_help_gives_the_default(tmp_path, cli):
    from launch.__main__ import build_parser, main
    from launch.status import REMOTE_STATUS_S

    res = cli(main, "status", tmp_path, "--remote-timeout", "0")
    assert res.code == 2 and "--remote-timeout: must be > 0 seconds, got 0" in res.err
    assert res.out == ""
    status = build_parser()._subparsers._group_actions[0].choices["status"]
    assert f"(default: {REMOTE_STATUS_S:g})" in " ".join(status.format_help().split())
