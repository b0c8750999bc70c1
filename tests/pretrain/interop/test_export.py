"""What `arrowtrain export` and the loaders of exported files refuse before any work (issue 19
items 2 and 4): an --out that is a device, a FIFO or (for --format hf) a file, left as it was; a
--tag with path parts; an exported file whose metadata declares a model its tensors are not
(1e30 layers, a huge vocabulary), or that is a FIFO: one message naming the file, nothing
built. Device nodes are made here with mknod in the test's own folder, never the machine's."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers.dist import REPO
from safetensors.torch import save_model

from arrowtrain.commands.export import main as export_main
from pretrain.configlib import load_yaml, validate_section
from pretrain.interop.export import ExportError, checkpoint_dir, load_exported
from pretrain.model import ModelConfig, build_model


@pytest.fixture(autouse=True)
def _keep_caplog(monkeypatch):
    """main() configures logging once per process, replacing the root logger's handlers (and
    caplog's with them) when it is the first to: keep it from doing so in these tests."""
    monkeypatch.setattr("pretrain.logs._CONFIGURED", True)


def _nodes(tmp_path):
    null, fifo = tmp_path / "null", tmp_path / "fifo"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(fifo)
    return [(null, "a character device", stat.S_ISCHR), (fifo, "a FIFO", stat.S_ISFIFO)]


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_out_that_is_a_device_or_fifo_is_refused_before_any_work(fmt, tmp_path, caplog):
    run = tmp_path / "run"  # no checkpoint: the --out check comes first
    for node, kind, test in _nodes(tmp_path):
        assert export_main([str(run), "--out", str(node), "--format", fmt]) == 2
        assert f"--out {node} is {kind}" in caplog.text
        assert test(os.stat(node).st_mode)  # still the node


def test_hf_out_that_is_a_regular_file_is_refused(tmp_path, caplog):
    (tmp_path / "f").write_text("keep")
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "f"), "--format",
                        "hf"]) == 2
    assert f"--out {tmp_path / 'f'} is a file; this command writes a folder" in caplog.text
    assert (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize("tag", ["../../other/checkpoints/step_00000004", "..", ".",
                                 "/abs/step_00000004", "a/b"])
def test_a_tag_with_path_parts_is_refused(tag, tmp_path):
    other = tmp_path / "other" / "checkpoints" / "step_00000004"
    other.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match="never a path"):
        checkpoint_dir(tmp_path / "run", tag)


def _exported(path, **claimed):
    """A tiny decoder saved as an export whose metadata claims `claimed` on top of its own."""
    data = {**load_yaml(REPO / "configs" / "model" / "gpt-tiny.yaml"), "vocab_size": 64,
            "n_layers": 1}
    cfg = validate_section(ModelConfig, data, source="test")
    save_model(build_model(cfg), str(path), metadata={
        "model_config": json.dumps({**cfg.model_dump(mode="json"), **claimed})})
    return path


@pytest.mark.parametrize("claimed, named", [
    (dict(n_layers=10**30), "declares 1000000000000000000000000000000 layers but the file "
                            "holds only"),
    (dict(n_layers=100000), "declares 100000 layers"),
    (dict(vocab_size=10**9), "tok_emb.weight: file [64, 64], config [1000000000, 64]"),
])
def test_metadata_that_does_not_describe_the_tensors_is_refused_unbuilt(claimed, named, tmp_path,
                                                                        monkeypatch):
    def never(*_):
        raise AssertionError("build_model was called")
    path = _exported(tmp_path / "m.safetensors", **claimed)
    monkeypatch.setattr("pretrain.interop.export.build_model", never)
    with pytest.raises(ExportError) as e:
        load_exported(path)
    assert str(path) in str(e.value) and named in str(e.value)


def test_a_fifo_export_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "m.safetensors")
    with pytest.raises(ExportError, match="is a FIFO"):
        load_exported(tmp_path / "m.safetensors")


def test_a_good_export_still_loads(tmp_path):
    model = load_exported(_exported(tmp_path / "m.safetensors"))
    assert isinstance(model, torch.nn.Module) and model.cfg.n_layers == 1
