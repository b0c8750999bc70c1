"""`arrowtrain sample`: it samples by default (temperature 0.8, top-k 40), seeded, so the same
command prints the same text, and `--temperature 0` is greedy. On an exported `.safetensors`: the
export carries the run's tokenizer (its metadata), so the file alone samples the same text as
the run folder; an export without one asks for --tokenizer, and --tokenizer makes it work;
unreadable files get one line. (The command runs in-process here; test_outputs.py runs it as a
subprocess.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from arrowtrain.commands.sample import main


@pytest.fixture
def sample(cli):
    return lambda *args: cli(main, *args, "--prompt", "the red", "--max-new-tokens", "8")


@pytest.fixture(scope="module")
def exported(straight_run, tmp_path_factory):
    from pretrain.interop.export import export

    return export(straight_run(0), tmp_path_factory.mktemp("export") / "model.safetensors")


def _without_tokenizer(src, dst):
    """The same file as exports made before they carried the tokenizer."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    del meta["tokenizer_json"]
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_the_export_carries_the_tokenizer_the_run_used(exported, straight_run):
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as f:
        meta = f.metadata()
    run_cfg = yaml.safe_load((straight_run(0) / "config.yaml").read_text())
    tok_file = Path(run_cfg["data"]["path"]) / "tokenizer.json"
    assert meta["tokenizer_json"] == tok_file.read_text()
    assert json.loads(meta["model_config"])["family"] == "decoder"


def test_sampling_the_export_gives_the_run_folders_text(exported, straight_run, sample):
    from_run, from_file = sample(straight_run(0)), sample(exported)
    assert from_file.code == 0, from_file.err
    text = from_file.out.strip()
    assert text == from_run.out.strip() and text.startswith("the red") and len(text) > 10


def test_an_export_without_tokenizer_asks_for_one_and_takes_it(exported, tiny_data, tmp_path,
                                                               sample):
    bare = _without_tokenizer(exported, tmp_path / "bare.safetensors")
    res = sample(bare)
    assert res.code == 2 and "Traceback" not in res.err
    assert f"{bare} carries no tokenizer" in res.err and "--tokenizer" in res.err
    res = sample(bare, "--tokenizer", tiny_data / "tokenizer.json")
    assert res.code == 0, res.err
    assert res.out.strip() == sample(exported).out.strip()


def test_bad_files_get_one_line(exported, tmp_path, sample):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    res = sample(junk)
    assert res.code == 2 and f"{junk} is not a readable .safetensors file" in res.err
    res = sample(exported, "--tokenizer", tmp_path / "nope.json")
    assert res.code == 2 and f"tokenizer {tmp_path / 'nope.json'}: no such file" in res.err
    assert "Traceback" not in res.err


def test_it_samples_by_default_seeded_and_greedy_at_temperature_0(straight_run):
    """Greedy decoding of a small model soon repeats itself: the default samples (temperature
    0.8, top-k 40) as nanoGPT does; a seed makes it repeatable; --temperature 0 is greedy."""
    import torch

    from arrowtrain.commands.sample import load_run, sample_text
    from pretrain.model.generate import generate

    run = straight_run(0)

    def text(**kw):
        return sample_text(run, "the red", max_new_tokens=12, **kw)

    default = text()
    assert default == text() == text(seed=0, temperature=0.8, top_k=40)  # repeatable
    assert len({text(seed=s) for s in range(4)}) > 1  # the seed decides the draw
    greedy = text(temperature=0.0)
    assert default != greedy
    model, tok = load_run(run, None)
    ids = torch.tensor([tok.encode("the red").ids])  # (1, T)
    out = generate(model, ids, 12, temperature=0.0)  # (1, T + 12): the most likely every time
    assert greedy == tok.decode(out[0].tolist(), skip_special_tokens=False)


def test_help_states_the_sampling_defaults(capsys):
    from arrowtrain.commands.sample import main

    with pytest.raises(SystemExit) as done:
        main(["--help"], prog="arrowtrain sample")
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "temperature 0.8 among the 40 most likely tokens" in text
    assert "--temperature 0 decodes greedily" in text
    assert "(default: 0.8)" in text and "(default: 40)" in text
    assert "the same seed gives the same text" in text
