"""`launch status` on a run folder written by hand (no job): checkpoint, metrics, ETA."""

from __future__ import annotations

import json
import subprocess
import sys

from launch.common import REPO
from launch.status import collect


def test_status_reads_checkpoint_metrics_and_eta(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000040\n")
    (tmp_path / "checkpoints" / "step_00000040").mkdir()
    (tmp_path / "checkpoints" / "step_00000040" / "meta.json").write_text(json.dumps(
        {"step": 40, "world_size": 4, "config": {"deepspeed": {"zero_stage": 2}}}))
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
