"""`arrowtrain model CONFIG`: a model config's exact summary lines, run configs with overrides,
errors naming the file and key."""

import subprocess
import sys

import pytest
from helpers.models import CONFIG_DIR, shipped_model

from arrowtrain.commands.model import main
from pretrain.model import build_model, count_parameters


def test_summary_command_prints_exact_lines():
    """The real command in a subprocess (the other summary tests call main() in-process)."""
    out = subprocess.run([sys.executable, "-m", "arrowtrain.commands.model",
                          str(CONFIG_DIR / "gpt2-124m.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "parameters: 124439808" in lines
    assert f"flops_per_token: {6 * (124439808 - 1024 * 768) + 12 * 12 * 768 * 1024}" in lines


def test_summary_of_a_run_config_with_overrides(tmp_path, capsys):
    run = tmp_path / "run.yaml"  # a run config whose model section names a base file
    run.write_text(f"model:\n  base: {CONFIG_DIR / 'gpt-tiny.yaml'}\n  n_layers: 3\n"
                   "optim: {lr: 1.0e-3}\n")
    assert main([str(run), "--vocab-size", "96", "d_model=128"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "layers: 3" in lines and "d_model: 128" in lines
    tiny = shipped_model("gpt-tiny", vocab=96).model_copy(update={"n_layers": 3, "d_model": 128})
    assert f"parameters: {count_parameters(build_model(tiny))}" in lines
    assert main([str(CONFIG_DIR / "t5-tiny.yaml")]) == 0
    out = capsys.readouterr()
    assert "vocab_size: 32000" in out.out and "--vocab-size" in out.err


def test_summary_command_errors_and_help(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: decoder\nmax_seq_len: 8\nd_model: 64\nn_heads: 5\nn_layers: 1\n")
    assert main([str(bad), "n_head=4"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "n_heads" in err and "n_head: unknown key" in err
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "flops_per_token" in capsys.readouterr().out
