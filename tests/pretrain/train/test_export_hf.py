"""`arrowtrain export RUNDIR --format hf --out DIR` on a real 2-rank run: transformers'
Auto classes load the folder with no custom code, give the run's fp32 logits within 1e-4, and
the tokenizer encodes as the shards were encoded and decodes what it encodes; the folder
imports back (arrowtrain import-hf) to the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from arrowtrain.commands.export import main
from arrowtrain.commands.import_hf import main as import_main
from data_tools.tokenizer import load_tokenizer
from pretrain.interop.export import load_exported, load_trained_model

transformers = pytest.importorskip("transformers")  # a dev dependency: always there in CI

TEXT = "the quiet dog follows the green river . the old cat sees the stone ."


@pytest.fixture(scope="module")
def hf_dir(straight_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "gpt-tiny-hf"
    assert main([str(straight_run(0)), "--format", "hf", "--out", str(out)]) == 0
    return out


def test_folder_has_what_transformers_reads(hf_dir):
    assert sorted(p.name for p in hf_dir.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu"  # exact GELU, as ours
    assert config["vocab_size"] == 512
    special = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert special["eos_token"] == "<|endoftext|>" and special["pad_token"] == "<|pad|>"
    assert len(special["additional_special_tokens"]) == 100  # the T5 sentinels
    assert json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"] == 0


def test_transformers_gives_the_runs_logits(hf_dir, straight_run):
    ours, _ = load_trained_model(straight_run(0))
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(hf_dir,
                                                                 output_loading_info=True)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        assert (ours(x)["logits"] - hf(x).logits).abs().max() < 1e-4


def test_tokenizer_matches_the_shards_and_round_trips(hf_dir, tiny_data):
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(TEXT)["input_ids"]
    assert ids == load_tokenizer(tiny_data / "tokenizer.json").encode(TEXT).ids
    assert tok.decode(ids) == TEXT
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1


def test_hf_folder_imports_back_to_the_same_weights(hf_dir, straight_run, tmp_path):
    out = tmp_path / "back.safetensors"
    assert import_main([str(hf_dir), "--out", str(out)]) == 0
    ours, _ = load_trained_model(straight_run(0))
    back = load_exported(out)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_refused_before_anything_is_written(straight_run, tmp_path, caplog):
    """A run of a model HF cannot express (here: gpt-tiny's meta edited to post-norm) is
    refused, naming the field, and no folder appears."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run(0), run)
    for meta in run.glob("checkpoints/*/meta.json"):
        data = json.loads(meta.read_text())
        data["config"]["model"]["norm_position"] = "post"
        meta.write_text(json.dumps(data))
    assert main([str(run), "--format", "hf", "--out", str(tmp_path / "out")]) == 2
    assert "model.norm_position=post" in caplog.text
    assert not (tmp_path / "out").exists()


def test_out_folder_with_other_files_is_refused_and_an_export_is_replaced(
        straight_run, hf_dir, tmp_path, caplog):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main([str(straight_run(0)), "--format", "hf", "--out", str(mine)]) == 2
    assert "holds other files (notes.txt)" in caplog.text
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    from safetensors.torch import load_file

    before = load_file(hf_dir / "model.safetensors")
    assert main([str(straight_run(0)), "--format", "hf", "--out", str(hf_dir)]) == 0
    after = load_file(hf_dir / "model.safetensors")  # replaced: same checkpoint, same tensors
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(hf_dir.parent.glob(".*tmp*"))
