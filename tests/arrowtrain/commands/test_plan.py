"""`arrowtrain plan`: options, one JSON object on --json, what fits and what to change, the
time formula, errors naming what is wrong — and no torch."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest
from helpers.dist import REPO

from arrowtrain.commands.plan import main
from pretrain.train.plan.hardware import GiB

GPT2 = str(REPO / "configs" / "gpt2-124m.yaml")
GPT2_350M = str(REPO / "configs" / "gpt2-350m.yaml")
LLAMA = str(REPO / "configs" / "model" / "llama-1.1b.yaml")
STABLE = {"memory_bytes_per_gpu", "fits", "max_micro_batch", "tokens_per_sec", "hours",
          "gpu_hours"}
PARTS = {"parameters", "gradients", "optimizer_states", "activations", "deepspeed_buffers",
         "fragmentation", "total"}


def plan_json(capsys, *argv: str) -> dict:
    assert main(["--json", *argv]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one line: one JSON object, nothing else
    return json.loads(out)


def test_json_is_one_object_with_the_stable_keys(capsys):
    p = plan_json(capsys, "--config", GPT2, "--gpus", "8")
    assert p.keys() >= STABLE and set(p["memory_bytes_per_gpu"]) == PARTS
    mem = p["memory_bytes_per_gpu"]
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert p["memory_allocated_peak_bytes"] == mem["total"] - mem["fragmentation"]
    assert p["fits"] is True and p["changes"] == [] and p["gpus"] == 8
    assert p["parameters"] == 124_439_808


def test_time_is_the_trainers_flops_at_the_given_mfu(capsys):
    from pretrain.model import flops_per_token
    from pretrain.train.config import load_run_config

    p = plan_json(capsys, "--config", GPT2, "--gpus", "16", "--gpu", "a100", "--mfu", "0.5",
                  "--tokens", "1e10", "--price-per-gpu-hour", "2.5")
    fpt = flops_per_token(load_run_config(GPT2).model, 1024)
    assert p["flops_per_token"] == fpt
    assert p["tokens_per_sec"] == pytest.approx(16 * 312e12 * 0.5 / fpt)
    assert p["hours"] == pytest.approx(1e10 / p["tokens_per_sec"] / 3600)
    assert p["gpu_hours"] == pytest.approx(16 * p["hours"])
    assert p["cost"] == pytest.approx(2.5 * p["gpu_hours"])
    assert p["step_time_s"] == pytest.approx(480 * 1024 / p["tokens_per_sec"])
    default = plan_json(capsys, "--config", GPT2, "--gpus", "8")  # tokens: steps × batch
    assert default["tokens"] == 600_000 * 480 * 1024 and default["cost"] is None
    full = plan_json(capsys, "--config", GPT2, "--gpus", "8",
                     "train.activation_checkpointing=full")  # one more forward: +1/3
    assert full["tokens_per_sec"] == pytest.approx(default["tokens_per_sec"] * 3 / 4)


def test_largest_micro_batch_fits_and_the_next_does_not(capsys):
    p = plan_json(capsys, "--config", GPT2_350M, "--gpus", "8", "--gpu-memory", "24GB")
    b = p["max_micro_batch"]
    assert b > 1
    at = plan_json(capsys, "--config", GPT2_350M, "--gpus", "8", "--gpu-memory", "24GB",
                   f"train.micro_batch_size={b}")
    above = plan_json(capsys, "--config", GPT2_350M, "--gpus", "8", "--gpu-memory", "24GB",
                      f"train.micro_batch_size={b + 1}")
    assert at["fits"] and not above["fits"]
    assert at["memory_bytes_per_gpu"]["total"] <= 24 * GiB < above["memory_bytes_per_gpu"]["total"]


def test_what_to_change_comes_cheapest_first_and_the_last_fits(capsys):
    args = ["--config", LLAMA, "--gpus", "8", "--gpu-memory", "8GB",
            "train.micro_batch_size=1", "deepspeed.zero_stage=0"]
    p = plan_json(capsys, *args)
    assert not p["fits"] and p["max_micro_batch"] == 0
    whats = [c["what"].split(" (")[0] for c in p["changes"]]
    assert whats == ["activation checkpointing selective", "activation checkpointing full",
                     "ZeRO stage 1", "ZeRO stage 2", "ZeRO stage 3", "optimizer offload to CPU memory"]
    assert [c["fits"] for c in p["changes"]] == [False] * 5 + [True]
    totals = [c["total_bytes"] for c in p["changes"]]
    assert totals == sorted(totals, reverse=True)  # each step saves memory
    keys = [o for c in p["changes"] for o in c["overrides"]]
    assert plan_json(capsys, *args, *keys)["fits"]  # the overrides as printed do it


def test_more_gpus_when_sharding_states_is_what_is_left(capsys):
    """Everything else already on: only sharding the parameters over more GPUs is left."""
    args = ["--config", LLAMA, "--nodes", "1", "--gpus-per-node", "2", "--gpu-memory", "3GB",
            "train.micro_batch_size=1", "deepspeed.zero_stage=3", "data.seq_len=512",
            "train.activation_checkpointing=full", "deepspeed.offload_optimizer=true",
            "deepspeed.extra={zero_optimization: {stage3_max_reuse_distance: 0, "
            "stage3_prefetch_bucket_size: 0}}", "precision=bf16"]
    p = plan_json(capsys, *args)
    assert not p["fits"] and len(p["changes"]) == 1
    last = p["changes"][0]
    assert last["what"].startswith("more GPUs") and last["fits"]
    nodes = int(last["overrides"][0].split()[1])
    assert plan_json(capsys, *args[:2], "--nodes", str(nodes), *args[4:])["fits"]


def test_human_output_names_parts_fit_and_time(capsys):
    assert main(["--config", GPT2_350M, "--gpus", "1", "--gpu-memory", "16GB"]) == 0
    out = capsys.readouterr().out
    for text in ("memory per GPU", "optimizer states", "activations", "DeepSpeed buffers",
                 "fragmentation", "DOES NOT FIT", "largest micro-batch that fits",
                 "to make it fit, cheapest first", "train.micro_batch_size=", "tokens/s",
                 "GPU-hours"):
        assert text in out, text


def test_a_model_config_is_planned_with_the_recipe(capsys):
    assert main(["--config", LLAMA, "--gpus", "8", "--json"]) == 0
    captured = capsys.readouterr()
    assert "is a model config: planned as a run with" in captured.err
    p = json.loads(captured.out)
    assert p["parameters"] == 1_100_048_384  # TinyLlama's count (configs/model/llama-1.1b.yaml)


def test_nothing_fits_says_so(capsys):
    assert main(["--config", LLAMA, "--gpus", "2", "--gpu-memory", "1GB",
                 "deepspeed.offload_optimizer=true", "deepspeed.zero_stage=3",
                 "train.activation_checkpointing=full", "train.micro_batch_size=1"]) == 0
    assert "no number of GPUs makes it fit" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--config", GPT2, "train.micro_batchsize=4"], "train.micro_batchsize"),
    (["--config", GPT2, "--nodes", "2"], "--nodes needs --gpus-per-node"),
    (["--config", GPT2, "--gpu-memory", "lots"], "'lots' is not a size"),
    (["--config", GPT2, "--peak-tflops", "300"], "--peak-tflops needs"),
    (["--config", GPT2, "--mfu", "1.5"], "--mfu must be in (0, 1]"),
    (["--config", str(REPO / "configs" / "nope.yaml")], "nope.yaml")])
def test_errors_name_what_is_wrong(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and captured.out == ""


def test_every_option_explains_itself_and_states_a_default_once(monkeypatch):
    parsers = []

    def grab(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args", grab)
    with pytest.raises(SystemExit):
        main([])
    for action in parsers[0]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.dest
        assert len(re.findall(r"\bdefault\b", action.help)) <= 1, action.dest


def test_answers_without_torch_through_the_console_script():
    code = ("import sys\nfrom arrowtrain.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch' in sys.modules, 'deepspeed' in sys.modules, file=sys.stderr)\n"
            "sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "plan", "--config", GPT2, "--gpus", "8",
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    json.loads(res.stdout)
    assert res.stderr.strip().splitlines()[-1] == "False False"
