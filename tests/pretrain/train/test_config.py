"""The run config: every problem in one error, before any process starts; every shipped YAML
validates; the generated DeepSpeed JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.dist import REPO

from pretrain.configlib import ConfigError, load_yaml
from pretrain.model import ModelConfig, build_model
from pretrain.train.config import load_run_config
from pretrain.train.engine import deepspeed_config, param_groups

GOOD = {
    "run_dir": "runs/x",
    "model": {"family": "decoder", "max_seq_len": 32, "d_model": 32, "n_heads": 4, "n_layers": 1},
    "data": {"path": "data/x", "seq_len": 32},
    "train": {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 2},
}


def write(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_all_problems_are_listed_in_one_error(tmp_path):
    bad = {**GOOD, "optim": {"lr": 1e-3, "learning_rate": 1e-3},          # unknown key
           "model": {**GOOD["model"], "n_heads": 5},                         # 5 ∤ 32
           "train": {**GOOD["train"], "global_batch_size": 6}}               # 6 % (2·2)
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, bad), ["deepspeed.zero_stag=2"], world_size=2)
    text = str(err.value)
    assert "4 config problem(s)" in text and str(tmp_path / "run.yaml") in text
    assert "optim.learning_rate: unknown key" in text
    assert "deepspeed.zero_stag: unknown key" in text
    assert "model.n_heads" in text and "must divide d_model=32" in text
    assert "train" in text and "micro_batch_size × ranks (2 × 2)" in text


def test_a_moved_key_names_its_new_place_among_the_other_problems(tmp_path):
    old = {**GOOD, "model": {**GOOD["model"], "activation_checkpointing": "full", "n_heads": 5}}
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, old))
    text = str(err.value)
    assert "model.activation_checkpointing: moved to train.activation_checkpointing" in text
    assert "model.n_heads" in text  # still reported together
    cfg = load_run_config(write(tmp_path, GOOD), ["train.activation_checkpointing=full",
                                                  "train.compile_scope=blocks"])
    assert cfg.train.activation_checkpointing.mode == "full"
    assert cfg.train.compile_scope == "blocks"


def test_world_size_check_only_when_known(tmp_path):
    cfg = {**GOOD, "train": {**GOOD["train"], "global_batch_size": 6}}
    assert load_run_config(write(tmp_path, cfg)).train.global_batch_size == 6
    with pytest.raises(ConfigError, match="micro_batch_size × ranks"):
        load_run_config(write(tmp_path, cfg), world_size=2)


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    path = write(tmp_path, {"base": "base.yaml", "train": {"max_steps": 99}})
    cfg = load_run_config(path, ["deepspeed.zero_stage=3", "precision=bf16", "seed=7"])
    assert (cfg.train.max_steps, cfg.train.global_batch_size) == (99, 8)
    assert (cfg.deepspeed.zero_stage, cfg.precision, cfg.seed) == (3, "bf16", 7)
    with pytest.raises(ConfigError, match="zero_stage"):
        load_run_config(path, ["deepspeed.zero_stage=4"])


# Runs pretrain.train's main in a fresh interpreter and reports which heavy modules it imported.
MAIN_AND_IMPORTS = ("import sys; from pretrain.train.__main__ import main; rc = main(sys.argv[1:]);"
                    " print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
                    "{'torch', 'deepspeed'})); sys.exit(rc)")


def test_cli_reports_every_problem_with_exit_2_before_torch_or_deepspeed(tmp_path):
    bad = {**GOOD, "bogus": 1, "model": {**GOOD["model"], "n_heads": 3}}
    path = write(tmp_path, bad)
    proc = subprocess.run(
        [sys.executable, "-c", MAIN_AND_IMPORTS, "--config", str(path),
         "train.micro_batch_size=3", "train.max_steps", "optim.lrr=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "HEAVY []" in proc.stdout  # refused before DeepSpeed (and torch) started
    assert "6 config problem(s):" in proc.stderr
    in_file, from_cli = proc.stderr.split(f"in {path}:")[1].split("from the command line:")
    for text in ("bogus: unknown key", "model.n_heads",
                 "train.global_batch_size (8) is not divisible by train.micro_batch_size × "
                 "ranks (3 × 2) (with `train.micro_batch_size=3` from the command line)",
                 f"data.path {REPO / 'data' / 'x'}: no such folder"):
        assert text in in_file
    for text in ("override 'train.max_steps' is not of the form dotted.key=value",
                 "optim.lrr: unknown key (did you mean `optim.lr`?) (from `optim.lrr=1`)"):
        assert text in from_cli


def test_cross_section_checks_run_next_to_other_problems(tmp_path):
    t5 = {"data.objective=span_corruption", "data.input_length=40"}
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, GOOD), ["optim.lr=-1", "eval.max_samples=3", *t5],
                        world_size=2)
    text = str(err.value)
    assert "optim.lr: Input should be greater than 0" in text  # an invalid section...
    # ...hides none of the checks across the valid ones
    assert "data.objective span_corruption needs model.family encdec, not decoder" in text
    assert ("eval.max_samples (3) is less than one evaluation batch, micro_batch_size × ranks "
            "(2 × 2)") in text
    assert "data.input_length (40) exceeds model.max_seq_len (32)" in text
    assert load_run_config(write(tmp_path, GOOD), ["eval.max_samples=3", "eval.at_end=false"],
                           world_size=2).eval.max_samples == 3  # no evaluation, no batch


ENCDEC = ["model.family=encdec", "model.n_layers=null", "model.n_encoder_layers=1",
          "model.n_decoder_layers=1", "data.objective=span_corruption", "data.input_length=32"]


@pytest.mark.parametrize("overrides,needle", [
    (["data.seq_len=64"], "data.seq_len (64) exceeds model.max_seq_len (32)"),
    ([*ENCDEC, "data.target_length=40"], "data.target_length (40) exceeds model.max_seq_len"),
    ([*ENCDEC, "data.noise_density=0.9"],
     "data.target_length (94, derived from input_length) exceeds model.max_seq_len (32)"),
    ([*ENCDEC, "data.target_length=4"],
     "data.target_length (4) is too short: input_length 32 at noise_density 0.15 needs 8"),
    (ENCDEC[:4], "data.objective clm needs model.family decoder, not encdec"),
])
def test_lengths_and_objective_against_the_model(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, GOOD), overrides)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(needle)
    load_run_config(write(tmp_path, GOOD), ENCDEC)  # the fitting encoder-decoder run passes


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_validates(path):
    if path.parent.name == "model":  # model files: a ModelConfig that builds (on meta)
        cfg = ModelConfig.model_validate({"vocab_size": 512, **load_yaml(path)})
        import torch

        with torch.device("meta"):
            assert sum(p.numel() for p in build_model(cfg).parameters()) > 0
    else:
        cfg = load_run_config(path, world_size=2)
        ds = deepspeed_config(cfg, world_size=2)
        # DeepSpeed counts each of a row's P pieces as a sample (pretrain/train/sequence.py)
        P = cfg.parallel.sequence_parallel_size
        assert ds["train_batch_size"] == cfg.train.global_batch_size * P


def test_deepspeed_json_is_generated_from_the_typed_config(tmp_path):
    cfg = load_run_config(write(tmp_path, GOOD), [
        "train.global_batch_size=32", "train.micro_batch_size=4", "deepspeed.zero_stage=2",
        "deepspeed.offload_optimizer=true", "precision=bf16", "optim.grad_clip=0.5",
        "deepspeed.extra={zero_optimization: {overlap_comm: true}}"])
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["gradient_accumulation_steps"] == 4  # 32 / (4 × 2)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["overlap_comm"] is True  # the escape hatch merges
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW"  # DeepSpeedCPUAdam for offload
    with pytest.raises(ConfigError, match="offload_optimizer needs zero_stage"):
        load_run_config(write(tmp_path, GOOD), ["deepspeed.offload_optimizer=true"])


def test_weight_decay_applies_to_matrices_only():
    model = build_model(ModelConfig.model_validate({**GOOD["model"], "vocab_size": 64}))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["params"]
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["params"]
    n = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n


def test_deepspeed_levers_reach_the_generated_json(tmp_path):
    path = write(tmp_path, GOOD)
    ds = deepspeed_config(load_run_config(path), world_size=1)  # the defaults
    assert ds["timers"] == {"throughput": {"enabled": False}}
    assert ds["disable_python_gc"] is True
    zero = ds["zero_optimization"]
    assert (zero["overlap_comm"], zero["contiguous_gradients"]) == (False, True)
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 500_000_000
    assert not ds["torch_autocast"]["enabled"] and not ds["bf16"]["enabled"]

    ds = deepspeed_config(load_run_config(path, [
        "precision=bf16", "deepspeed.zero_stage=2", "deepspeed.throughput_timer=true",
        "deepspeed.check_grad_overflow=true", "deepspeed.overlap_comm=true",
        "deepspeed.contiguous_gradients=false", "deepspeed.reduce_bucket_size=1000",
        "deepspeed.allgather_bucket_size=2000", "deepspeed.python_gc_every_steps=0"]), 1)
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": True}
    assert ds["timers"]["throughput"]["enabled"] is True and ds["disable_python_gc"] is False
    assert ds["zero_optimization"] == {
        "stage": 2, "overlap_comm": True, "contiguous_gradients": False,
        "reduce_bucket_size": 1000, "allgather_bucket_size": 2000}
    assert ds["bf16"]["check_grad_overflow"] is True
    assert deepspeed_config(load_run_config(path, ["precision=bf16"]), 1)["bf16"] == {
        "enabled": True, "check_grad_overflow": False}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16_autocast", "fp16"])
def test_precision_modes_map_to_one_deepspeed_mode_each(tmp_path, precision):
    ds = deepspeed_config(load_run_config(write(tmp_path, GOOD), [f"precision={precision}"]), 1)
    enabled = {k for k in ("bf16", "fp16", "torch_autocast") if ds[k]["enabled"]}
    want = {"fp32": set(), "bf16": {"bf16"}, "bf16_autocast": {"torch_autocast"},
            "fp16": {"fp16"}}[precision]
    assert enabled == want
    # Always set: without it DeepSpeed hands torch.autocast dtype=None (fp16 on CUDA).
    assert ds["torch_autocast"]["dtype"] == "bfloat16"


def test_lever_values_are_checked(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, GOOD), [
            "deepspeed.reduce_bucket_size=0", "deepspeed.python_gc_every_steps=-1",
            "train.sync_every_steps=0", "deepspeed.throughput_timers=true",
            "precision=bf16_auto"])
    text = str(err.value)
    assert "5 config problem(s)" in text, text
    for key in ("deepspeed.reduce_bucket_size", "deepspeed.python_gc_every_steps",
                "train.sync_every_steps", "deepspeed.throughput_timers: unknown key",
                "precision"):
        assert key in text, text
    # A cross-section check (run once every section is valid on its own).
    with pytest.raises(ConfigError, match="check_grad_overflow applies to precision bf16 only "
                                          r"\(precision is bf16_autocast\)"):
        load_run_config(write(tmp_path, GOOD), ["deepspeed.check_grad_overflow=true",
                                                "precision=bf16_autocast"])


def test_checkpoint_async_takes_true_false_or_auto(tmp_path):
    """Default auto; YAML booleans and the words from an override; anything else is an error
    naming the key."""
    assert load_run_config(write(tmp_path, GOOD)).checkpoint.async_ == "auto"
    yaml_bool = {**GOOD, "checkpoint": {"async": False}}
    assert load_run_config(write(tmp_path, yaml_bool)).checkpoint.async_ is False
    for text, value in (("true", True), ("false", False), ("auto", "auto")):
        cfg = load_run_config(write(tmp_path, GOOD), [f"checkpoint.async={text}"])
        assert cfg.checkpoint.async_ == value and type(cfg.checkpoint.async_) is type(value)
    with pytest.raises(ConfigError, match=r"checkpoint\.async.*true, false or auto, not "
                                          r"'maybe'"):
        load_run_config(write(tmp_path, GOOD), ["checkpoint.async=maybe"])
