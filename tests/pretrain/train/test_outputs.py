"""Loss falls for decoder and encoder-decoder runs; export (from ZeRO-3) → safetensors that
build_model loads and that reproduces the run's validation loss; sample prints text (and only
text on stdout), refuses bad options with one line; plot."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers.dist import REPO, run_ranks

from arrowtrain.commands.plot import plot
from pretrain.data import DataConfig, eval_batches
from pretrain.interop.export import export, load_exported
from pretrain.objectives import open_data


def test_decoder_loss_falls(straight_run, runs):
    losses = [loss for _, loss in runs.train_losses(straight_run(0))]
    assert losses[-1] < losses[0] - 1.0, losses


def test_logged_lr_is_the_lr_each_step_used(straight_run, runs):
    """Read from the scheduler (not recomputed): gpt-tiny's cosine, warmup 2, peak 3e-3."""
    from pretrain.train.config import ScheduleConfig
    from pretrain.train.schedule import lr_multiplier

    cfg = ScheduleConfig(name="cosine", warmup_steps=2)
    rows = [r for r in runs.read_metrics(straight_run(0)) if "loss" in r]
    assert [r["lr"] for r in rows] == pytest.approx(
        [3e-3 * lr_multiplier(cfg, r["step"] - 1, 8) for r in rows], rel=1e-12)
    assert rows[0]["lr"] == pytest.approx(1.5e-3)  # half the peak in the first warmup step


def test_encoder_decoder_span_corruption_loss_falls(tiny_data, runs, tmp_path):
    run = tmp_path / "run"
    run_ranks(runs.train_args("t5-tiny.yaml", run, tiny_data, "train.max_steps=12",
                              "data.input_length=32", "eval.every_steps=0",
                              "eval.max_samples=16"), tmp_path / "logs")
    rows = runs.read_metrics(run)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0, losses
    assert [r for r in rows if "val_loss" in r][-1]["val_loss"] < losses[0] - 1.0


def test_export_from_zero3_loads_into_build_model_and_reproduces_val_loss(
        straight_run, runs, tiny_data, tmp_path):
    run = straight_run(3)
    mask = os.umask(0o022)
    try:
        out = export(run, tmp_path / "model.safetensors")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # the umask's, not safetensors' 0600
    model = load_exported(out)  # build_model + strict load of every tensor
    trained_val = [r["val_loss"] for r in runs.read_metrics(run) if "val_loss" in r][-1]
    src = open_data(DataConfig(path=str(tiny_data), seq_len=32, num_workers=0), seed=1234)
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches(src, 2, rank=0, world=1, max_samples=16):
            logits = model(**batch)["logits"]
            nats += F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(),
                                    ignore_index=-100, reduction="sum").item()
            tokens += int((batch["targets"] != -100).sum())
    assert nats / tokens == pytest.approx(trained_val, rel=1e-5)


def test_sample_prints_a_continuation(straight_run, cli):
    from arrowtrain.commands.sample import main

    res = cli(main, straight_run(0), "--prompt", "the red", "--max-new-tokens", "8")
    assert res.code == 0, res.err
    text = res.out.strip()
    assert text.startswith("the red") and len(text) > len("the red") + 3, text


def test_sample_from_zero1_prints_only_the_text_on_stdout(straight_run):
    """zero_to_fp32 prints its progress: that goes to stderr, never into the sampled text. (The
    command as a real subprocess: its exit code and stdout alone.)"""
    proc = subprocess.run(
        [sys.executable, "-m", "arrowtrain.commands.sample", str(straight_run(1)), "--prompt",
         "the red",
         "--max-new-tokens", "8", "--temperature", "0.8", "--top-k", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("the red"), proc.stdout
    assert "zero checkpoint" in proc.stderr  # DeepSpeed's messages, on stderr


@pytest.mark.parametrize("args, message", [
    (["--top-k", "-1"], "argument --top-k: -1 is not ≥ 0 (0: every token)"),
    (["--temperature", "-0.5"], "argument --temperature: -0.5 is not ≥ 0"),
    (["--temperature", "nan"], "argument --temperature: nan is not ≥ 0"),
    (["--max-new-tokens", "-3"], "argument --max-new-tokens: -3 is not ≥ 0"),
    (["--max-new-tokens", "x"], "argument --max-new-tokens: 'x' is not an integer"),
])
def test_sample_rejects_bad_options_with_one_line(args, message, capsys, tmp_path):
    from arrowtrain.commands.sample import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_sample_rejects_a_prompt_that_is_not_utf8(tmp_path, cli):
    import os

    from arrowtrain.commands.sample import main

    # argv bytes "café" in latin-1, as Python hands them to sys.argv (surrogate escapes)
    res = cli(main, tmp_path, "--prompt", os.fsdecode(b"caf\xe9"))
    assert res.code == 2, res.err
    assert "--prompt is not valid UTF-8 text (byte 0xe9 at character 3)" in res.err
    assert "Traceback" not in res.err and res.out == ""


def test_plot_writes_a_png(straight_run, tmp_path):
    png = plot(straight_run(0), tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
