"""Weights-only loading everywhere: the allow-list is exactly what real DeepSpeed checkpoints
hold, and a pickle that names code is refused inside DeepSpeed's own `zero_to_fp32` too."""

from __future__ import annotations

import os
import pickletools
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.tamper import payload_is_live, write_payload

from pretrain.train.safeload import (
    UnsafeCheckpointFile,
    deepspeed_globals,
    probe,
    weights_only_loading,
)


def pickle_globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data)
            if op.name == "GLOBAL"}


@pytest.mark.parametrize("stage", [1, 3])
def test_allow_list_is_what_real_zero_checkpoints_hold(straight_run, stage):
    tag_dir = straight_run(stage) / "checkpoints" / "step_00000008"
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in deepspeed_globals()}
    seen = set()
    for f in sorted(tag_dir.glob("*.pt")):
        seen |= {g for g in pickle_globals(f) if not g.startswith(("torch.", "collections."))}
        probe(f)  # loads weights-only with the allow-list
    assert seen and seen <= allowed, seen - allowed
    assert "deepspeed.runtime.zero.config.ZeroStageEnum" in seen


def test_forced_inside_deepspeed_zero_to_fp32(straight_run, tmp_path):
    """DeepSpeed calls torch.load(weights_only=False) on each ZeRO partition."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(straight_run(1) / "checkpoints", ckpt_dir)
    victim = ckpt_dir / "step_00000008" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    marker = tmp_path / "marker"
    write_payload(victim, marker)
    assert payload_is_live(victim, marker)
    with pytest.raises(UnsafeCheckpointFile) as err, weights_only_loading():
        get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag="step_00000008")
    assert not marker.exists()
    assert err.value.path == victim and "posix.system" in err.value.reason
    assert torch.load.__name__ == "load" and not hasattr(torch.load, "__wrapped__")  # restored
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


@pytest.mark.parametrize("zip_archive", [True, False])
def test_probe_refuses_a_payload_naming_why(tmp_path, zip_archive):
    path, marker = tmp_path / "model.pt", tmp_path / "marker"
    write_payload(path, marker, zip_archive)
    with pytest.raises(UnsafeCheckpointFile) as err:
        probe(path)
    assert not marker.exists()
    assert ("posix.system" if zip_archive else "not a torch.save archive") in err.value.reason
    assert "weights_only=False" not in str(err.value)  # torch's advice is not repeated


def test_tensors_and_plain_data_load_and_nesting_keeps_the_guard(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(3), "step": 4, "name": "x"}, path)
    with weights_only_loading():
        with weights_only_loading():
            pass  # an inner exit must not lift the outer guard
        assert torch.load(path, weights_only=False)["step"] == 4
        write_payload(tmp_path / "bad.pt", tmp_path / "marker")
        with pytest.raises(UnsafeCheckpointFile):
            torch.load(tmp_path / "bad.pt", weights_only=False)
    assert not (tmp_path / "marker").exists()
