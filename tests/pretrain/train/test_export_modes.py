"""Exported files get the mode every other file gets, 0666 less the umask (issue 18 item 10:
safetensors writes 0600): `export` (one .safetensors file, an HF folder) and `import-hf`."""

from __future__ import annotations

import os
import stat

import pytest

from arrowtrain.commands.import_hf import import_hf
from pretrain.interop.export import export, export_hf


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_export_and_import_follow_the_umask(straight_run, tmp_path, umask_027):
    run = straight_run(0)
    out = export(run, tmp_path / "m.safetensors")
    assert _mode(out) == 0o640
    folder = export_hf(run, tmp_path / "hf")
    assert {f.name: _mode(f) for f in folder.iterdir()} == {
        name: 0o640 for name in ("config.json", "generation_config.json", "model.safetensors",
                                 "tokenizer.json", "tokenizer_config.json")}
    back = import_hf(folder, tmp_path / "back.safetensors")
    assert _mode(back) == 0o640
