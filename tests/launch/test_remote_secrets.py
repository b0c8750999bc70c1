"""With s3:// data the launchers pass the AWS credentials through the environment only: the
secret appears in no --dry-run output, no generated sbatch script, no DeepSpeed env file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from data_tools.copy import copy_folder
from pretrain.data.synthetic import random_docs, write_folder

REPO = Path(__file__).resolve().parents[2]


def test_no_secret_in_dry_runs_or_scripts(s3, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    write_folder(folder, {"train": [random_docs(rng, 4000, 30, 2, 500)],
                          "val": [random_docs(rng, 1500, 30, 2, 500)]}, 512)
    url = s3.url("d")
    copy_folder(str(folder), url)
    secret = s3.env["AWS_SECRET_ACCESS_KEY"]
    env = {**os.environ, **s3.env, "PYTHONPATH": str(REPO)}
    common = ["--config", str(REPO / "configs" / "gpt-tiny.yaml"), f"data.path={url}",
              f"run_dir={tmp_path / 'run'}", "data.seq_len=32", f"data.cache_dir={tmp_path}/c"]
    outputs = []
    for launcher in (["local", "--nproc", "2"], ["slurm", "--nodes", "1",
                                                 "--tasks-per-node", "2"]):
        res = subprocess.run([sys.executable, "-m", "launch", *launcher, "--dry-run", *common],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout + res.stderr)
    assert "#SBATCH" in outputs[1] and url in outputs[1]
    assert not any(secret in out for out in outputs)
    for path in (tmp_path / "run").rglob("*") if (tmp_path / "run").exists() else []:
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
