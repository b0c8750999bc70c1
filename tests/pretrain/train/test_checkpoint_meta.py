"""meta.json's file names stay inside the checkpoint folder: a remote copy's meta.json (which
checkpoint.remote downloads files by) cannot name ../ or absolute paths."""

import pytest
from pydantic import ValidationError

from pretrain.train.checkpoint_meta import CheckpointMeta


def _meta(files: dict) -> dict:
    return {"step": 3, "consumed_samples": 24, "data_fingerprint": "f", "param_shapes": {},
            "world_size": 2, "config": {}, "files": files}


def test_ordinary_and_nested_names_are_kept():
    names = {"mp_rank_00_model_states.pt": {"bytes": 1, "sha256": "a"},
             "zero/wte.weight/fp32.pt": {"bytes": 2, "sha256": "b"}}
    assert set(CheckpointMeta.model_validate(_meta(names)).files) == set(names)


@pytest.mark.parametrize("name", ["../../.bashrc", "/etc/passwd", "a/../../b", "a//b", "",
                                  "a\\..\\b", "x\n.pt"])
def test_a_name_outside_the_folder_is_refused(name):
    with pytest.raises(ValidationError, match="not a path inside the checkpoint folder"):
        CheckpointMeta.model_validate(_meta({name: {"bytes": 1, "sha256": "a"}}))
