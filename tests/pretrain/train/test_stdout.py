"""Commands whose output a user pipes print their result alone on stdout; DeepSpeed's and our
own log lines go to stderr. Each command runs as a user runs it — stdout to a file, and without
DS_ACCELERATOR in the environment (DeepSpeed then guesses the accelerator and, before
`pretrain.train.distenv.import_deepspeed`, printed "[WARNING] ... Setting accelerator to CPU"
into the file). `arrowtrain translate` is checked on an encoder-decoder run in test_seq2seq.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.dist import REPO


def to_file(tmp_path: Path, *args: str, stdin: str | None = None) -> tuple[str, str]:
    """Run `arrowtrain ARGS` with stdout to a file (as `> out.txt` does): (file text, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    out = tmp_path / "stdout.txt"
    with out.open("w") as f:
        res = subprocess.run([sys.executable, "-m", "arrowtrain", *args], cwd=REPO, env=env,
                             input=stdin, stdout=f, stderr=subprocess.PIPE, text=True,
                             timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out.read_text(), res.stderr


def test_sample_export_model_and_status_print_their_result_alone(straight_run, tmp_path):
    run = straight_run(0)
    text, err = to_file(tmp_path, "sample", str(run), "--prompt", "the red",
                        "--max-new-tokens", "6")
    assert text.startswith("the red") and text.count("\n") == 1 and "WARNING" not in text

    hf = tmp_path / "hf"
    text, err = to_file(tmp_path, "export", str(run), "--format", "hf", "--out", str(hf))
    assert text == f"{hf}\n" and "wrote" in err
    assert (hf / "model.safetensors").is_file()

    text, err = to_file(tmp_path, "model", str(REPO / "configs" / "model" / "gpt-tiny.yaml"))
    lines = text.splitlines()
    assert lines[0] == "family: decoder" and all(": " in line for line in lines)
    assert "parameters: " in text and "note:" not in text

    text, _ = to_file(tmp_path, "launch", "status", str(run), "--json")
    assert json.loads(text)["state"] == "finished"
