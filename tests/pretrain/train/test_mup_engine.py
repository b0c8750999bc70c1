"""muP under the DeepSpeed engine (all --slow: each case starts real gloo ranks): a run stopped
and resumed at ZeRO 0-3 gives the uninterrupted run's losses bit for bit; stopped on 2 ranks at
ZeRO-3 and resumed on 1 through the universal checkpoint (whose load copies the first param
group's settings into every group) it tracks them; with the optimizer offloaded (DeepSpeed's
CPU Adam builds its groups from ours) it matches the torch AdamW run; init_from a muP export
starts where the exported run ended. The width multiplier is 4 (d_model 64, base 16), so a
group with the wrong lr shows in the losses within a step or two."""

from __future__ import annotations

import pytest
from helpers.dist import run_ranks

MUP = ("model.parametrization=mup", "model.mup_base_width=16", "model.dropout=0.0",
       "model.tie_embeddings=false")

pytestmark = pytest.mark.slow


def _args(runs, tiny_data, run, stage, *extra):
    return runs.small_run_args(run, tiny_data, stage, *MUP, *extra)


@pytest.fixture(scope="module")
def straight(tiny_data, runs, tmp_path_factory):
    cache = {}

    def get(stage: int, world: int = 2):
        if (stage, world) not in cache:
            root = tmp_path_factory.mktemp(f"mup_straight_{stage}_{world}")
            run_ranks(_args(runs, tiny_data, root / "run", stage), root / "logs",
                      world_size=world)
            cache[stage, world] = runs.train_losses(root / "run")
        return cache[stage, world]

    return get


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stop_and_resume_is_bitwise_exact_at_every_zero_stage(stage, tiny_data, runs, straight,
                                                              tmp_path):
    run = tmp_path / "run"
    run_ranks(_args(runs, tiny_data, run, stage, "train.stop_at_step=4"), tmp_path / "a",
              expect=75)
    resumed = run_ranks(_args(runs, tiny_data, run, stage), tmp_path / "b")
    assert "resumed from" in resumed.logs(tail=10_000)
    assert runs.train_losses(run) == straight(stage)


def test_elastic_resume_through_the_universal_checkpoint_at_zero3(tiny_data, runs, straight,
                                                                  tmp_path):
    run = tmp_path / "run"
    run_ranks(_args(runs, tiny_data, run, 3, "train.stop_at_step=4"), tmp_path / "a",
              expect=75)
    one = run_ranks(_args(runs, tiny_data, run, 3), tmp_path / "b", world_size=1)
    assert "re-shard from 2 to 1 ranks" in one.logs(tail=10_000)
    got, want = runs.train_losses(run), straight(3)
    assert got[:4] == want[:4]
    for (step, a), (_, b) in zip(got[4:], want[4:]):
        assert a == pytest.approx(b, rel=1e-4), f"step {step}: {a} vs {b}"


def test_offloaded_optimizer_matches_torch_adamw(tiny_data, runs, straight, tmp_path):
    """The first run on a machine builds DeepSpeed's cpu_adam op (about 5 minutes on a 2-core
    EPYC; cached in ~/.cache/torch_extensions afterwards)."""
    run = tmp_path / "run"
    run_ranks(_args(runs, tiny_data, run, 1, "deepspeed.offload_optimizer=true"),
              tmp_path / "a", world_size=1, timeout=900)
    for (step, a), (_, b) in zip(runs.train_losses(run), straight(1, world=1)):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}: {a} vs {b}"


def test_init_from_a_mup_export(tiny_data, runs, straight, tmp_path):
    import subprocess
    import sys

    from helpers.dist import REPO

    src, dst = tmp_path / "src", tmp_path / "dst"
    run_ranks(_args(runs, tiny_data, src, 0), tmp_path / "a", world_size=1)
    out = tmp_path / "w.safetensors"
    subprocess.run([sys.executable, "-m", "arrowtrain.commands.export", str(src), "--out",
                    str(out)], cwd=REPO, check=True, capture_output=True, timeout=240)
    run_ranks(_args(runs, tiny_data, dst, 0, f"init_from={out}", "train.max_steps=2"),
              tmp_path / "b", world_size=1)
    first, trained = runs.train_losses(dst)[0][1], runs.train_losses(src)
    assert first < trained[0][1] - 0.2  # not the fresh init's loss (the same seed's)
    assert abs(first - trained[-1][1]) < 0.3  # but about where the exported run ended
