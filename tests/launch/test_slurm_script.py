"""The rendered batch script: validation, quoting (injection), and its rank mapping, requeue and
failure logic run for real under slurmctld with a recording stand-in for the trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.__main__ import main as launch_main
from launch.common import LaunchError
from launch.slurm import SlurmJob, render_script, submit, validate, write_script
from launch.status import collect

NASTY = ["a'; touch pwned; echo '", "$(touch pwned)", "`touch pwned`", "with space",
         'dq"$HOME"', "semi;colon&amp|pipe>redir"]

RECORDER = """#!{python}
import json, os, sys
from pathlib import Path
here = Path(__file__).resolve().parent
rank = int(os.environ["RANK"])
restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS",
        "SLURM_RESTART_COUNT", "SLURM_JOB_ID", "SLURMD_NODENAME"]
rec = {{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}, "cwd": os.getcwd()}}
(here / f"rank{{rank}}.restart{{restart}}.json").write_text(json.dumps(rec))
plan = json.loads((here / "plan.json").read_text())
sys.exit(plan[restart][rank])
"""


def make_job(tmp: Path, **kw) -> SlurmJob:
    base = dict(config=str(tmp / "c.yaml"), overrides=["train.max_steps=3"],
                run_dir=str(tmp / "run"), work_dir=str(tmp))
    base.update(kw)
    return validate(SlurmJob(**base))


def assert_no_side_effects(*roots: Path) -> None:
    for root in roots:
        assert not list(root.rglob("pwned")), f"injected command ran under {root}"


# --- validation: values that cannot be quoted safely are refused, naming the option --------

@pytest.mark.parametrize("option,value", [
    ("job_name", "a'; echo pwned"), ("job_name", "$(id)"), ("job_name", "two words"),
    ("partition", "debug\n#SBATCH --uid=0"), ("account", "acc`id`"), ("qos", "q;x"),
    ("time", "1:00:00\n#SBATCH --x"), ("time", "soon"),
])
def test_sbatch_directive_values_are_refused(tmp_path, option, value):
    opt = "--" + option.replace("_", "-")
    with pytest.raises(LaunchError, match=opt):
        make_job(tmp_path, **{option: value})


@pytest.mark.parametrize("field,value", [
    ("overrides", ["logging.wandb.name=a\nb"]), ("overrides", ["x=a\x00b"]),
    ("config", "/tmp/c\n.yaml"), ("run_dir", "/tmp/r\rx"), ("python", "/usr/bin/py\tthon"),
])
def test_control_characters_are_refused(tmp_path, field, value):
    with pytest.raises(LaunchError, match="control character"):
        make_job(tmp_path, **{field: value})


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(LaunchError) as err:
        make_job(tmp_path, nodes=0, time="x", job_name="a b", max_requeues=-1)
    for opt in ("--nodes", "--time", "--job-name", "--max-requeues"):
        assert opt in str(err.value)


def test_cli_refuses_newline_in_job_name_before_reading_config(tmp_path, capsys):
    code = launch_main(["slurm", "--config", str(tmp_path / "missing.yaml"),
                        "--job-name", "a\nb", "--dry-run"])
    assert code == 2
    assert "--job-name" in capsys.readouterr().err


# --- quoting: hostile but printable values keep their exact value -----------------------------

def test_rendered_script_parses_and_keeps_values(tmp_path):
    job = make_job(tmp_path, overrides=[f"logging.wandb.name={v}" for v in NASTY],
                   config=str(tmp_path / NASTY[0] / "c.yaml"), run_dir=str(tmp_path / NASTY[1]),
                   python=str(tmp_path / NASTY[2] / "py"), work_dir=str(tmp_path / NASTY[3]))
    script = render_script(job)
    assert "#SBATCH --open-mode=append" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --signal=USR1@300" in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # Evaluate only the assignments (everything before the body) and print the values back.
    head = script.split("RESTARTS=")[0]
    probe = head + 'printf "%s\\0" "$RUN_DIR" "$WORK_DIR" "$PYTHON" "${TRAIN_ARGS[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, check=True)
    values = out.stdout.decode().split("\0")[:-1]
    assert values == [job.run_dir, job.work_dir, job.python, "--config", job.config,
                      *job.overrides]
    assert_no_side_effects(tmp_path)


# --- the script under real SLURM -----------------------------------------------------------

def write_recorder(folder: Path, plan: list[list[int]]) -> Path:
    folder.mkdir(parents=True)
    rec = folder / "rec"
    rec.write_text(RECORDER.format(python=sys.executable))
    rec.chmod(0o755)
    (folder / "plan.json").write_text(json.dumps(plan))
    return rec


def submit_recorded(slurm, tmp: Path, plan, monkeypatch, **kw) -> tuple[SlurmJob, str, Path]:
    rec_dir = tmp / NASTY[1] / "rec dir"
    rec = write_recorder(rec_dir, plan)
    work = tmp / NASTY[0]
    work.mkdir()
    job = make_job(tmp, python=str(rec), run_dir=str(tmp / NASTY[2]), work_dir=str(work),
                   overrides=["logging.wandb.name=" + v for v in NASTY], nodes=2,
                   tasks_per_node=1, omp_threads=1, **kw)
    for k, v in slurm.env.items():
        monkeypatch.setenv(k, v)
    return job, submit(write_script(job)), rec_dir


@pytest.mark.slurm
def test_ranks_mapped_across_two_nodes_and_values_intact(slurm, tmp_path, monkeypatch):
    job, job_id, rec_dir = submit_recorded(slurm, tmp_path, [[0, 0]], monkeypatch)
    assert slurm.wait_done(job_id) == "COMPLETED"
    recs = [json.loads((rec_dir / f"rank{r}.restart0.json").read_text()) for r in (0, 1)]
    for rank, rec in enumerate(recs):
        assert rec["argv"] == ["-m", "pretrain.train", "--config", job.config, *job.overrides]
        env = rec["env"]
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), "0", "2")
        assert env["MASTER_ADDR"] == "n1" and env["OMP_NUM_THREADS"] == "1"
        assert env["MASTER_PORT"] == str(15000 + int(job_id) % 20000)
        assert env["SLURMD_NODENAME"] == f"n{rank + 1}"
        assert rec["cwd"] == job.work_dir
    assert_no_side_effects(tmp_path, Path.cwd())
    events = [json.loads(x) for x in (Path(job.run_dir) / "slurm/events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "finished"]


@pytest.mark.slurm
def test_exit_75_requeues_and_restart_count_reaches_the_ranks(slurm, tmp_path, monkeypatch):
    job, job_id, rec_dir = submit_recorded(slurm, tmp_path, [[75, 75], [0, 0]], monkeypatch)
    assert slurm.wait_done(job_id) == "COMPLETED"
    second = json.loads((rec_dir / "rank1.restart1.json").read_text())
    assert second["env"]["SLURM_RESTART_COUNT"] == "1"
    slurm_dir = Path(job.run_dir) / "slurm"
    events = [json.loads(x) for x in (slurm_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["restart"]) for e in events] == [
        ("start", 0), ("requeue", 0), ("start", 1), ("finished", 1)]
    log = (slurm_dir / f"job-{job_id}.out").read_text()  # appended across the restart
    assert "requeueing (restart 1 of at most 10)" in log and "finished" in log


@pytest.mark.slurm
def test_failure_is_not_requeued_and_status_says_why(slurm, tmp_path, monkeypatch):
    job, job_id, _ = submit_recorded(slurm, tmp_path, [[75, 3], [0, 0]], monkeypatch)
    assert slurm.wait_done(job_id) == "FAILED"
    info = collect(Path(job.run_dir))
    assert info["job"]["restarts"] == 0 and info["job"]["state"] == "FAILED"
    assert info["job"]["last_event"]["event"] == "failed"
    assert "code 3" in info["job"]["why"]


def test_gpus_per_node_gives_one_task_per_gpu(tmp_path):
    script = render_script(make_job(tmp_path, nodes=3, gpus_per_node=4, time="2-00:00:00",
                                    partition="gpu,gpu-long", signal_seconds=600))
    for line in ("--nodes=3", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=2-00:00:00",
                 "--partition=gpu,gpu-long", "--signal=USR1@600"):
        assert f"#SBATCH {line}\n" in script


def test_cli_dry_run_validates_config_and_prints_without_submitting(tmp_path, tiny_data, cli):
    """In-process (test_e2e.py submits through the real `python -m launch slurm`)."""
    from launch.common import REPO

    cfg = str(REPO / "configs" / "gpt-tiny.yaml")
    res = cli(launch_main, "slurm", "--config", cfg, "--nodes", "2", "--dry-run",
              f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}")
    assert res.code == 0, res.err
    assert res.out.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in res.out
    assert f"RUN_DIR={tmp_path / 'run'}" in res.out
    assert not (tmp_path / "run").exists()
    assert "EXIT_RESUME=75" in res.out  # the exit codes come from pretrain/exit_codes.py
    # world size 2 x micro-batch 2 must divide the global batch: 3 ranks cannot
    bad = cli(launch_main, "slurm", "--config", cfg, "--nodes", "3", "--dry-run")
    assert bad.code == 2 and "global_batch_size" in bad.err


def test_a_remote_wait_longer_than_the_signal_lead_is_warned_about(tmp_path, tiny_data, cli):
    """A stop waits for the checkpoint upload up to checkpoint.remote_timeout: at or above
    --signal-seconds, the time limit can kill the job while it waits."""
    from launch.common import REPO

    cfg = str(REPO / "configs" / "gpt-tiny.yaml")
    args = ("slurm", "--config", cfg, "--nodes", "2", "--dry-run")
    common = (f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}",
              "checkpoint.remote=s3://bucket/ckpt")
    quiet = cli(launch_main, *args, *common)  # the default remote_timeout is below the lead
    assert quiet.code == 0 and "remote_timeout" not in quiet.err, quiet.err
    loud = cli(launch_main, *args, "--signal-seconds", "120", *common,
               "checkpoint.remote_timeout=120")
    assert loud.code == 0, loud.err
    assert "checkpoint.remote_timeout=120 s is not below --signal-seconds 120" in loud.err
