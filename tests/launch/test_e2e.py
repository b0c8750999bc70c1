"""End to end with the real trainer (tiny GPT, 2 CPU ranks, real DeepSpeed): a SLURM job across
n1/n2 preempted with `scancel --signal=USR1` saves, exits 75, requeues itself, resumes and
finishes with per-step losses equal bit for bit to an uninterrupted 2-rank run; a job
whose data disappears fails without a requeue and `status` says why; DeepSpeed's hostfile
launcher trains and stops on SIGUSR1 per node (--no_ssh, two "nodes" on loopback), and over real
ssh + pdsh to two host names of a private sshd stops and resumes, equal to the uninterrupted
run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.dist import run_ranks

from launch.common import REPO
from pretrain.train.distenv import free_port

CONFIG = str(REPO / "configs" / "gpt-tiny.yaml")
STEPS = 40
PREEMPT_AT_STEP = 4


def overrides(run_dir: Path, data: Path) -> list[str]:
    return [f"run_dir={run_dir}", f"data.path={data}", f"train.max_steps={STEPS}",
            "checkpoint.every_steps=1000", "eval.at_end=false", "eval.every_steps=0",
            "logging.every_steps=1", "logging.progress_bar=false"]


def launch(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, **kw)


def step_losses(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            assert row["step"] not in out, f"step {row['step']} logged twice"
            out[row["step"]] = row["loss"]
    return out


def wait_for_step(run_dir: Path, step: int, timeout_s: float = 180) -> None:
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and any(json.loads(x).get("step", 0) >= step
                                 for x in path.read_text().splitlines() if x.endswith("}")):
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} never reached step {step}")


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> dict[int, float]:
    """Per-step losses of one uninterrupted run on 2 local ranks (the trainer as `launch local
    --nproc 2` starts it; the launcher itself is tested by the SIGTERM test below and
    test_local*.py)."""
    root = tmp_path_factory.mktemp("local")
    run_ranks(["-m", "pretrain.train", "--config", CONFIG, *overrides(root / "run", tiny_data)],
              root / "logs")
    losses = step_losses(root / "run")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.slurm
def test_slurm_preempt_requeue_resume_equals_local(slurm, tiny_data, reference, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, **slurm.env}
    res = launch("slurm", "--config", CONFIG, "--nodes", "2", "--tasks-per-node", "1",
                 "--omp-threads", "1", "--max-requeues", "3", "--job-name", "e2e",
                 *overrides(run_dir, tiny_data), env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.split()[-1]
    wait_for_step(run_dir, PREEMPT_AT_STEP)
    slurm.run("scancel", "--signal=USR1", job_id)
    assert slurm.wait_done(job_id, timeout_s=300) == "COMPLETED", _job_log(run_dir, job_id)

    events = [json.loads(x) for x in (run_dir / "slurm/events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "requeue", "start", "finished"]
    assert step_losses(run_dir) == reference  # bit for bit across preemption + requeue
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    restarts = [r["restart_count"] for r in rows if "loss" in r]
    assert restarts[0] == 0 and restarts[-1] == 1
    log = _job_log(run_dir, job_id)
    assert "0: " in log and "1: " in log  # srun --label: both ranks in the appended log
    status = launch("status", str(run_dir), env=env, timeout=60)
    assert "restarts: 1" in status.stdout and "COMPLETED" in status.stdout
    assert f"step_{STEPS:08d}" in status.stdout


@pytest.mark.slurm
def test_slurm_job_with_vanished_data_fails_and_status_says_why(slurm, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = tmp_path / "run"
    env = {**os.environ, **slurm.env}
    res = launch("slurm", "--config", CONFIG, "--nodes", "2", "--tasks-per-node", "1",
                 "--omp-threads", "1", "--hold", *overrides(run_dir, data), env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.split()[-1]
    pending = launch("status", str(run_dir), env=env, timeout=60).stdout
    assert f"job {job_id}: PENDING (squeue)" in pending, pending
    shutil.rmtree(data)  # the data path goes bad after submission
    slurm.run("scontrol", "release", job_id)
    assert slurm.wait_done(job_id) == "FAILED"
    events = [json.loads(x) for x in (run_dir / "slurm/events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "failed"]
    status = launch("status", str(run_dir), env=env, timeout=60).stdout
    assert "FAILED" in status and "restarts: 0" in status
    assert "code 2 (config or data error)" in status
    assert str(data) in status, status  # the trainer's own message names the missing folder


def _job_log(run_dir: Path, job_id: str) -> str:
    path = run_dir / "slurm" / f"job-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no job log)"


def _start_node(node_rank: int, hosts: Path, port: int, run_dir: Path, data: Path,
                log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "launch", "hostfile", "--config", CONFIG, "--hostfile",
             str(hosts), "--no-ssh", "--node-rank", str(node_rank), "--master-addr",
             "127.0.0.1", "--master-port", str(port), "--omp-threads", "1",
             *overrides(run_dir, data)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)


def _run_nodes(hosts, run_dir, data, tmp_path, attempt, stop_at_step=None) -> list[int]:
    port = free_port()
    logs = [tmp_path / f"node{r}.{attempt}.log" for r in (0, 1)]
    procs = [_start_node(r, hosts, port, run_dir, data, logs[r]) for r in (0, 1)]
    try:
        if stop_at_step:
            wait_for_step(run_dir, stop_at_step)
            for p in procs:
                p.send_signal(signal.SIGUSR1)
        return [p.wait(timeout=300) for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        print("\n".join(x.read_text(errors="replace")[-3000:] for x in logs))
        raise


def test_hostfile_two_nodes_on_loopback_train_and_stop(tiny_data, reference, tmp_path):
    """Per node (--no-ssh, --node-rank): both launchers relay SIGUSR1, the ranks save and exit
    75, every step's loss equal to the uninterrupted run's (the resume through DeepSpeed's launch.py
    is the ssh test's)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("nodeA slots=1\nnodeB slots=1\n")
    run_dir = tmp_path / "run"
    assert _run_nodes(hosts, run_dir, tiny_data, tmp_path, 1, PREEMPT_AT_STEP) == [75, 75]
    saved = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert PREEMPT_AT_STEP <= saved < STEPS
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, saved + 1))
    assert losses == {step: reference[step] for step in losses}


def test_local_forwards_sigterm_ranks_save_and_exit_75(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "launch", "local", "--config", CONFIG,
                             "--nproc", "1", *overrides(run_dir, tiny_data)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(run_dir, PREEMPT_AT_STEP)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, out[-3000:]
    assert "forwarding SIGTERM" in out
    saved = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert PREEMPT_AT_STEP <= saved < STEPS


@pytest.mark.ssh
def test_hostfile_over_ssh_stop_resume_equals_local(sshd, tiny_data, reference, tmp_path):
    """The ssh path end to end: pdsh -> sshd -> DeepSpeed's launch.py -> one rank per host;
    SIGUSR1 to the launcher reaches both ranks (through pdsh), they save and the launcher exits
    75; the same command resumes and finishes with exit 0, every loss equal to the uninterrupted
    run.
    A value with quotes, spaces and `$` survives the remote shell unchanged."""
    host_a, host_b = sshd.hosts
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{host_a} slots=1\n{host_b} slots=1\n")
    run_dir = tmp_path / "run"
    name = """it's a "quoted" $HOME `id` name"""
    cmd = [sys.executable, "-m", "launch", "hostfile", "--config", CONFIG, "--hostfile",
           str(hosts), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "--omp-threads", "1", *overrides(run_dir, tiny_data), f"logging.wandb.name={name}"]
    log1, log2 = tmp_path / "launch1.log", tmp_path / "launch2.log"
    with open(log1, "wb") as out:
        first = subprocess.Popen(cmd, cwd=REPO, env=sshd.env, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_step(run_dir, PREEMPT_AT_STEP, timeout_s=300)
        first.send_signal(signal.SIGUSR1)
        assert first.wait(timeout=300) == 75, log1.read_text()[-5000:]
    finally:
        first.kill()
    text = log1.read_text()
    assert "pdsh@" in text and f"{host_a}: ssh exited with exit code 75" in text, text[-5000:]
    assert f"{host_b}: ssh exited with exit code 75" in text
    assert "received SIGUSR1" in text and "[rank 1 " in text  # the rank behind host b got it
    saved = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert PREEMPT_AT_STEP <= saved < STEPS

    with open(log2, "wb") as out:
        second = subprocess.run(cmd, cwd=REPO, env=sshd.env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=400)
    text = log2.read_text()
    assert second.returncode == 0, text[-5000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{saved:08d}'}" in text
    assert step_losses(run_dir) == reference
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["logging"]["wandb"]["name"] \
        == name
