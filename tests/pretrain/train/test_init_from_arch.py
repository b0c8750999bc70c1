"""`init_from` without a hand-matched model section (issue 18 item 3): a run config with no model
section, or `model: {from_init: true}`, takes the architecture the file records
(`model_config` in its metadata, written by `arrowtrain export` and `arrowtrain import-hf`); a
model key that computes differently names the value that fits (the shipped GPT-2 configs' `gelu`
against a real GPT-2's `gelu_tanh`); `import-hf MODEL_ID` says how to download the folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers.dist import REPO
from safetensors.torch import save_model

from pretrain.configlib import ConfigError, load_yaml
from pretrain.train.preflight import check_run

GPT_TINY = REPO / "configs" / "gpt-tiny.yaml"


def write_init(path, **update):
    """A file as `arrowtrain import-hf` writes it for a tiny GPT-2 (gelu_new -> gelu_tanh)."""
    from pretrain.configlib import validate_section
    from pretrain.model import ModelConfig, build_model

    data = {**load_yaml(REPO / "configs" / "model" / "gpt-tiny.yaml"), "vocab_size": 512,
            "activation": "gelu_tanh", "dropout": 0.0, **update}
    cfg = validate_section(ModelConfig, data, source="test")
    save_model(build_model(cfg), str(path),
               metadata={"model_config": json.dumps(cfg.model_dump(mode="json"))})
    return cfg


def run_config(tmp_path, model=None) -> str:
    """configs/gpt-tiny.yaml with its model section replaced (None: no model section)."""
    data = load_yaml(GPT_TINY)
    data.pop("model")
    if model is not None:
        data["model"] = model
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_no_model_section_takes_the_files_architecture(tiny_data, tmp_path):
    want = write_init(tmp_path / "gpt2.safetensors", n_layers=3)
    cfg = check_run(run_config(tmp_path), [f"data.path={tiny_data}",
                                           f"init_from={tmp_path / 'gpt2.safetensors'}"])
    assert cfg.model == want
    # an override below model (a training-only setting) goes over the file's
    cfg = check_run(run_config(tmp_path), [f"data.path={tiny_data}", "model.dropout=0.1",
                                           f"init_from={tmp_path / 'gpt2.safetensors'}"])
    assert cfg.model == want.model_copy(update={"dropout": 0.1})


def test_from_init_true_with_training_settings_over_it(tiny_data, tmp_path):
    want = write_init(tmp_path / "gpt2.safetensors")
    config = run_config(tmp_path, {"from_init": True, "dropout": 0.2})
    cfg = check_run(config, [f"data.path={tiny_data}",
                             f"init_from={tmp_path / 'gpt2.safetensors'}"])
    assert cfg.model == want.model_copy(update={"dropout": 0.2})
    # a key that changes the file's shapes is refused as with a hand-written model section
    with pytest.raises(ConfigError) as err:
        check_run(config, [f"data.path={tiny_data}", "model.d_model=128",
                           f"init_from={tmp_path / 'gpt2.safetensors'}"])
    assert "does not fit the run's model" in str(err.value)


def test_from_init_needs_a_readable_init_file(tiny_data, tmp_path):
    config = run_config(tmp_path, {"from_init": True})
    with pytest.raises(ConfigError) as err:
        check_run(config, [f"data.path={tiny_data}"])
    assert "model.from_init: true needs init_from: FILE.safetensors" in str(err.value)
    assert "unknown key" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_run(run_config(tmp_path), [f"data.path={tiny_data}",
                                         f"init_from={tmp_path / 'gone.safetensors'}"])
    text = str(err.value)
    assert "gone.safetensors: no such file (the run takes its model section from this file)" \
        in text and "model: required key" not in text, text
    with pytest.raises(ConfigError) as err:
        check_run(config, [f"data.path={tiny_data}", "model.from_init=maybe"])
    assert "model.from_init: expected true or false, got 'maybe'" in str(err.value)


def test_a_gelu_config_against_a_gpt2_file_names_the_value_that_fits(tiny_data, tmp_path):
    write_init(tmp_path / "gpt2.safetensors")
    with pytest.raises(ConfigError) as err:  # configs/model/gpt-tiny.yaml: activation gelu
        check_run(GPT_TINY, [f"data.path={tiny_data}",
                             f"init_from={tmp_path / 'gpt2.safetensors'}"])
    text = str(err.value)
    assert "model.activation is 'gelu' but init_from" in text
    assert "set model.activation=gelu_tanh" in text and "from_init: true" in text
    check_run(GPT_TINY, [f"data.path={tiny_data}", "model.activation=gelu_tanh",
                         f"init_from={tmp_path / 'gpt2.safetensors'}"])


def test_import_hf_of_a_hub_id_says_how_to_download_it(tmp_path):
    res = subprocess.run([sys.executable, "-m", "arrowtrain.commands.import_hf", "gpt2",
                          "--out", str(tmp_path / "gpt2.safetensors")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and res.stdout == ""
    assert "gpt2: no such folder" in res.stderr
    assert "hf download gpt2 config.json model.safetensors tokenizer.json --local-dir " \
           "gpt2-hf" in res.stderr
    assert "arrowtrain import-hf gpt2-hf --out gpt2.safetensors" in res.stderr
    assert "Traceback" not in res.stderr
