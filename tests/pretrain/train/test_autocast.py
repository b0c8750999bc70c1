"""precision=bf16_autocast (DeepSpeed's torch_autocast, dtype bfloat16) really runs on 2 gloo
ranks at ZeRO-2: fp32 weights (the checkpoint holds fp32 tensors), the forward in bf16 (the
losses differ from the fp32 run's, slightly), and the loss falls."""

from __future__ import annotations

import pytest
import torch
from helpers.dist import run_ranks

STAGE = 2


def test_bf16_autocast_trains_with_fp32_weights(tiny_data, straight_run, runs, tmp_path):
    run = tmp_path / "run"
    run_ranks(runs.small_run_args(run, tiny_data, STAGE, "precision=bf16_autocast"),
              tmp_path / "logs")
    got = runs.train_losses(run)
    want = runs.train_losses(straight_run(STAGE))  # the same run in fp32
    assert [s for s, _ in got] == list(range(1, 9))
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in got)
    assert got[-1][1] < got[0][1] - 1.0, got  # it learns
    # bf16 matmuls: close to the fp32 run, but not equal (autocast is on).
    assert got != want
    assert got[0][1] == pytest.approx(want[0][1], abs=0.05)

    states = sorted((run / "checkpoints" / "step_00000008").glob("*model_states.pt"))
    assert states, "no model states saved"
    module = torch.load(states[0], map_location="cpu", weights_only=True)["module"]
    dtypes = {t.dtype for t in module.values() if t.is_floating_point()}
    assert dtypes == {torch.float32}, dtypes  # weights stay fp32 (bf16 mode would save bf16)
