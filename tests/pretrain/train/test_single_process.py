"""One process with no launcher (world size 1, a plain `python -m pretrain.train` subprocess),
relative paths resolved against the working directory, and a non-finite loss stopping the run
with a message naming the step; a resume refused for a changed model shape."""

from __future__ import annotations

import os

import yaml
from helpers.dist import REPO, run_python, run_ranks
from helpers.tamper import snapshot


def test_alone_relative_paths_and_nonfinite_loss_stop(tiny_data, tmp_path):
    (tmp_path / "data").symlink_to(tiny_data)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = run_python(
        ["-m", "pretrain.train", "--config", str(REPO / "configs/gpt-tiny.yaml"),
         "run_dir=runs/nan", "data.path=data", "model.init_std=1.0e30", "train.max_steps=3",
         "data.seq_len=32", "logging.progress_bar=false"],
        cwd=tmp_path, env=env, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "non-finite loss (nan) at step 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    run = tmp_path / "runs" / "nan"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["run_dir"] == str(run)
    assert resolved["data"]["path"] == str(tmp_path / "data")
    assert resolved["model"]["vocab_size"] == 512  # the tokenizer's 512, a multiple of 64
    assert not (run / "checkpoints" / "latest").exists()  # nothing saved from a NaN run


def test_resume_refuses_a_changed_model_shape_naming_it(straight_run, runs, tiny_data, tmp_path):
    run = runs.copy_run(straight_run(0), tmp_path / "run")
    before = snapshot(run)
    ranks = run_ranks(runs.small_run_args(run, tiny_data, 0, "model.n_layers=3", "optim.lr=1e-3"),
                      tmp_path / "logs", world_size=1, expect=2)
    logs = ranks.logs(10**6)
    # the pre-flight (before DeepSpeed starts) names the model key, not the parameters
    assert f"the model changed since checkpoint {run / 'checkpoints' / 'step_00000008'} (step " \
           "8), so it cannot resume: model.n_layers: 2 → 3" in logs
    assert "Traceback" not in logs
    assert snapshot(run) == before  # refused: config.yaml (lr 1e-3) not written, nothing else
