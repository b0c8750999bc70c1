"""`init_from: FILE.safetensors`: the pre-flight refuses a file that does not fit the model
(naming the parameters, or the model keys that would compute differently) before any rank
starts, without torch; a real 2-rank ZeRO-3 run starts from the file's weights (its first loss is
the loss of those weights on the first batch) and, once it has a checkpoint, resumes from that
instead (logged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers.dist import REPO, run_ranks
from safetensors.torch import save_model

from pretrain.configlib import ConfigError
from pretrain.data import train_batches
from pretrain.interop.export import export, load_exported
from pretrain.model import build_model
from pretrain.objectives import open_data
from pretrain.train.config import load_run_config
from pretrain.train.preflight import check_run, read_folder

GPT_TINY = REPO / "configs" / "gpt-tiny.yaml"


def write_init(path, **update):
    """A pretrain-format file of configs/model/gpt-tiny.yaml (vocab 512) with `update`."""
    from pretrain.configlib import load_yaml, validate_section
    from pretrain.model import ModelConfig

    data = {**load_yaml(REPO / "configs" / "model" / "gpt-tiny.yaml"), "vocab_size": 512, **update}
    cfg = validate_section(ModelConfig, data, source="test")
    save_model(build_model(cfg), str(path),
               metadata={"model_config": json.dumps(cfg.model_dump(mode="json"))})
    return path


def check(tiny_data, init, *overrides):
    return check_run(GPT_TINY, [f"data.path={tiny_data}", f"init_from={init}", *overrides],
                     world_size=2)


def problems(tiny_data, init, *overrides) -> str:
    with pytest.raises(ConfigError) as err:
        check(tiny_data, init, *overrides)
    return str(err.value)


def test_a_fitting_file_passes_and_gives_the_vocabulary(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_init(tmp_path / "w.safetensors", vocab_size=576, dropout=0.0, max_seq_len=128)
    cfg = check(tiny_data, "w.safetensors", "model.vocab_size=null", "model.max_seq_len=128")
    assert cfg.init_from == tmp_path / "w.safetensors"  # resolved like the other paths
    assert cfg.model.vocab_size == 576  # the file's, not the tokenizer's rounded 512
    assert cfg.model.dropout == 0.1  # a training-only setting may differ
    # learned positions: another max_seq_len is another shape
    assert "positions.learned.weight: file [128, 64], run [64, 64]" in problems(
        tiny_data, tmp_path / "w.safetensors", "model.vocab_size=null")


def test_shape_mismatches_name_the_parameters(tiny_data, tmp_path):
    init = write_init(tmp_path / "w.safetensors", n_layers=3, d_ff=128)
    text = problems(tiny_data, init)
    assert "init_from" in text and "does not fit the run's model" in text
    assert "stack.blocks.0.ffn.up.weight: file [128, 64], run [256, 64]" in text
    assert "stack.blocks.2.norm1.weight: in the file, not in the run's model" in text


def test_same_shapes_computing_differently_are_refused_by_key(tiny_data, tmp_path):
    init = write_init(tmp_path / "w.safetensors", activation="relu", norm_eps=1e-6)
    text = problems(tiny_data, init)
    assert "model.activation is 'gelu' but init_from" in text and "with 'relu'" in text
    assert "model.norm_eps" in text


def test_bad_files_are_named_with_the_other_problems(tiny_data, tmp_path):
    text = problems(tiny_data, tmp_path / "absent.safetensors", "train.max_steps=0")
    assert "absent.safetensors: no such file" in text and "train.max_steps" in text
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "not a readable safetensors file" in problems(tiny_data, tmp_path / "junk.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_model(torch.nn.Linear(2, 2), str(bare))
    assert "no model_config in its metadata" in problems(tiny_data, bare)
    assert "expected a .safetensors file" in problems(tiny_data, tmp_path / "w.pt")
    small = write_init(tmp_path / "small.safetensors", vocab_size=64)
    vocab = read_folder(tiny_data).vocab_size
    assert f"its model's vocabulary (64) is smaller than the data's tokenizer's ({vocab})" in \
        problems(tiny_data, small, "model.vocab_size=null")


def test_fifos_and_non_float_weights_are_refused_at_once(tiny_data, tmp_path):
    """Issue 19 item 4: a FIFO would block the pre-flight forever; int8/bool weights would start
    a run at loss 4618. (A FIFO made here, never the machine's.)"""
    import stat
    os.mkfifo(tmp_path / "fifo.safetensors")
    assert "fifo.safetensors is a FIFO (named pipe), not a .safetensors file" in problems(
        tiny_data, tmp_path / "fifo.safetensors")
    dev = tmp_path / "zero.safetensors"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    assert "zero.safetensors is a character device" in problems(tiny_data, dev)
    path = write_init(tmp_path / "w.safetensors")
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path))
    tensors["stack.blocks.0.ffn.up.weight"] = tensors["stack.blocks.0.ffn.up.weight"].to(
        torch.int8)
    tensors["norm_f.weight"] = tensors["norm_f.weight"] > 0
    save_file(tensors, str(path), metadata={"model_config": json.dumps(
        {**load_exported_config(path)})})
    text = problems(tiny_data, path)
    assert "must be floating point" in text and "stack.blocks.0.ffn.up.weight (I8)" in text
    assert "norm_f.weight (BOOL)" in text


def load_exported_config(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        return json.loads(f.metadata()["model_config"])


def test_nan_weights_are_refused_when_loaded(tmp_path):
    from pretrain.train.init_from import InitFileError, load_init_weights
    path = write_init(tmp_path / "w.safetensors")
    cfg = load_exported_config(path)
    from pretrain.model import ModelConfig
    model = build_model(ModelConfig.model_validate(cfg))
    with torch.no_grad():
        model.stack.blocks[1].ffn.down.weight[0, 0] = float("nan")
    save_model(model, str(path), metadata={"model_config": json.dumps(cfg)})
    with pytest.raises(InitFileError, match=r"1 tensor\(s\) hold NaN or infinite values "
                       r"\(stack\.blocks\.1\.ffn\.down\.weight\)"):
        load_init_weights(build_model(ModelConfig.model_validate(cfg)), path)


def test_the_check_imports_no_torch(tiny_data, tmp_path):
    init = write_init(tmp_path / "w.safetensors")
    code = ("import sys; from pretrain.train.preflight import check_run; "
            f"cfg = check_run({str(GPT_TINY)!r}, ['data.path={tiny_data}', 'init_from={init}']); "
            "print(cfg.model.vocab_size, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'deepspeed'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "512 []"


def first_batch_loss(model, cfg) -> float:
    """The logged loss of step 1 (mean over ranks of the mean over micro-batches)."""
    src = open_data(cfg.data, cfg.seed)
    gas = cfg.train.global_batch_size // (cfg.train.micro_batch_size * 2)
    losses = []
    for rank in range(2):
        batches = train_batches(src, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                                rank, 2, consumed_samples=0, num_workers=0, pin_memory=False)
        with torch.no_grad():
            losses += [model(**next(batches))["loss"].item() for _ in range(gas)]
    return sum(losses) / len(losses)


def test_run_starts_from_the_weights_and_a_resume_ignores_them(straight_run, runs, tiny_data,
                                                                tmp_path):
    init = export(straight_run(0), tmp_path / "trained.safetensors")
    run = tmp_path / "run"
    args = runs.small_run_args(run, tiny_data, 3, f"init_from={init}", "model.dropout=0.0",
                               "train.max_steps=2", "eval.at_end=false")
    first = run_ranks([*args, "train.stop_at_step=1"], tmp_path / "logs1", expect=75)
    assert "starting from the weights of init_from" in first.logs()
    loss = runs.train_losses(run)[0]
    expected = first_batch_loss(load_exported(init), load_run_config(run / "config.yaml"))
    assert loss[0] == 1 and loss[1] == pytest.approx(expected, abs=1e-4)
    fresh = runs.train_losses(straight_run(0))[0][1]  # step 1 of a fresh init, same batch
    assert loss[1] < fresh - 1.0, (loss, fresh)

    second = run_ranks(args, tmp_path / "logs2")
    assert "init_from" in second.logs() and "ignored: the run resumes from checkpoint" in \
        second.logs()
    assert [s for s, _ in runs.train_losses(run)] == [1, 2]
