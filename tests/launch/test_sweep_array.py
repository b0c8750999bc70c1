"""`arrowtrain sweep --launcher slurm`'s job array under real SLURM, with a recording stand-in for
the trainer: each task runs its own run folder, a task whose trainer exits 75 requeues itself
(and only itself) and resumes, and `launch status RUNDIR` finds each run's own job id, restarts
and events. (--slow: the default run checks the script itself, tests/arrowtrain/commands/
test_sweep.py.)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from launch.slurm import (
    ArrayTask,
    SlurmJob,
    render_array_script,
    submit,
    validate,
    write_array_script,
)
from launch.status import collect

RECORDER = """#!{python}
import json, os, sys
from pathlib import Path
here = Path(__file__).resolve().parent
run = Path(json.loads(next(a for a in sys.argv if a.startswith("run_dir="))[8:])).name
restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
rec = {{"argv": sys.argv[1:], "job": os.environ["SLURM_JOB_ID"],
        "task": os.environ["SLURM_ARRAY_TASK_ID"]}}
(here / f"{{run}}.restart{{restart}}.json").write_text(json.dumps(rec))
sys.exit(json.loads((here / "plan.json").read_text())[run][restart])
"""


def events(run_dir: Path) -> list[tuple[str, int]]:
    path = run_dir / "slurm" / "events.jsonl"
    if not path.is_file():
        return []
    return [(e["event"], e["restart"]) for e in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slurm
@pytest.mark.slow  # ~15 s of SLURM scheduling; the script's quoting and task selection are
def test_array_tasks_requeue_themselves_and_status_reads_each_run(slurm, tmp_path,
                                                                   monkeypatch):
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    rec = rec_dir / "python"
    rec.write_text(RECORDER.format(python=sys.executable))
    rec.chmod(0o755)
    (rec_dir / "plan.json").write_text(json.dumps({"a": [75, 0], "b": [0]}))
    runs = {n: tmp_path / "sweep" / "runs" / n for n in "ab"}
    job = validate(SlurmJob(config=str(tmp_path / "c.yaml"), overrides=[], run_dir=str(tmp_path),
                            python=str(rec), work_dir=str(tmp_path), omp_threads=1))
    tasks = [ArrayTask(str(d), ["optim.lr=1e-3", f"run_dir={json.dumps(str(d))}"])
             for d in runs.values()]
    script = write_array_script(tmp_path / "sweep" / "slurm",
                                render_array_script(job, tasks, parallel=1))
    for k, v in slurm.env.items():
        monkeypatch.setenv(k, v)
    submit(script)
    deadline = time.monotonic() + 180
    want = {"a": [("start", 0), ("requeue", 0), ("start", 1), ("finished", 1)],
            "b": [("start", 0), ("finished", 0)]}
    while time.monotonic() < deadline and any(events(runs[n]) != want[n] for n in runs):
        time.sleep(1)
    assert {n: events(d) for n, d in runs.items()} == want, slurm.log_tail()
    first = json.loads((rec_dir / "a.restart0.json").read_text())
    again = json.loads((rec_dir / "a.restart1.json").read_text())
    assert first["job"] == again["job"] and first["task"] == "0"  # the same task, requeued
    assert first["argv"] == ["-m", "pretrain.train", "--config", job.config, *tasks[0].overrides]
    for name, run in runs.items():
        job_id = json.loads((rec_dir / f"{name}.restart0.json").read_text())["job"]
        assert (run / "slurm" / "jobs").read_text().split() == [job_id]  # once, across restarts
        info = collect(run)
        assert info["job"]["id"] == job_id
        assert info["job"]["restarts"] == (1 if name == "a" else 0)
        assert info["job"]["last_event"]["event"] == "finished"
    log = (runs["a"] / "slurm" / f"job-{first['job']}.out").read_text()
    assert "requeueing (restart 1 of at most 10)" in log and "finished" in log
