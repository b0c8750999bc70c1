"""`arrowtrain runs compare RUNDIR ...`: real runs side by side (final losses, tokens, wall time,
tokens/s, the config keys that differ), as a table and as CSV, torch-free; damaged or missing
files of a run get one line each naming the file, never a traceback."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers.dist import REPO

from arrowtrain.commands.plot import read_metrics
from pretrain.train.events import read_events
from pretrain.train.run_summary import differing_keys, flatten, summarize

# What `arrowtrain runs ...` runs, plus whether torch got imported.
SCRIPT = ("import sys\nfrom arrowtrain.cli import main\nrc = main(sys.argv[1:])\n"
          "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(rc)")


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, "runs", "compare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _copy(run, dest):
    """The three files compare reads, without the checkpoints."""
    dest.mkdir()
    for name in ("metrics.jsonl", "run_events.jsonl", "config.yaml"):
        shutil.copy(run / name, dest / name)
    return dest


def test_the_summary_holds_the_runs_own_figures(straight_run):
    run = straight_run(0)
    rows = read_metrics(run)
    train, val = [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    s = summarize(run)
    assert s.notes == [] and (s.step, s.max_steps) == (8, 8)
    assert s.final["loss"] == train[-1]["loss"] and s.final["val_loss"] == val[-1]["val_loss"]
    assert s.final["val_bpb"] == val[-1]["val_bpb"] and "val_bleu" not in s.final
    # every sample is seq_len input tokens: the tokens/s rows add up to what was consumed
    assert s.tokens == train[-1]["consumed_samples"] * cfg["data"]["seq_len"] == 8 * 8 * 32
    events = read_events(run)
    assert 0 < s.wall_seconds <= events[-1]["time"] - events[0]["time"] + 1e-6
    steps_s = sum(r["step_time_ms"] for r in train) / 1000  # one row per step
    assert s.tokens_per_sec == pytest.approx(s.tokens / steps_s)
    assert s.config == flatten(cfg) and s.config["train.max_steps"] == 8


def test_two_runs_side_by_side_table_and_csv(straight_run):
    a, b = straight_run(0), straight_run(1)
    res = compare(str(a), str(b))
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["run", "state", "step", "train", "loss", "val", "loss", "val",
                                "bpb", "tokens", "wall", "time", "tokens/s"]
    labels = [f"{a.parent.name}/run", f"{b.parent.name}/run"]
    for line, label in zip(lines[1:3], labels):
        assert line.split()[:3] == [label, "finished", "8/8"]
        assert "2,048" in line
    assert lines[lines.index("config keys that differ:") + 2].split() == [
        "deepspeed.zero_stage", "0", "1"]
    assert differing_keys([summarize(a).config, summarize(b).config]) == ["deepspeed.zero_stage"]

    res = compare(str(a), str(b), "--csv")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["run"] for r in rows] == labels and [r["state"] for r in rows] == ["finished"] * 2
    assert [r["deepspeed.zero_stage"] for r in rows] == ["0", "1"]
    last = [r["loss"] for r in read_metrics(a) if "loss" in r][-1]
    assert float(rows[0]["train_loss"]) == last  # unrounded
    assert int(rows[0]["tokens"]) == 2048 and float(rows[0]["wall_time_s"]) > 0
    assert rows[0]["val_bleu"] == ""


def test_damaged_and_missing_files_get_one_line_each(straight_run, tmp_path):
    good = _copy(straight_run(0), tmp_path / "good")
    cut = _copy(straight_run(1), tmp_path / "cut")
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text + '{"step": 9, "loss": 5.\n[1, 2]\n')  # killed
    (cut / "config.yaml").write_text("train: {max_steps: 8\nseed: [\n")
    fresh = tmp_path / "fresh"  # configured, never logged a step
    fresh.mkdir()
    shutil.copy(good / "config.yaml", fresh / "config.yaml")
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    res = compare(str(good), str(cut), str(fresh), str(empty), str(missing))
    assert "Traceback" not in res.stderr
    assert res.returncode == 2  # two folders hold nothing; the others are still shown
    err = res.stderr
    assert f"{missing}: no such run folder" in err
    assert f"{empty}: not a run folder (no metrics.jsonl, run_events.jsonl or config.yaml)" in err
    n = len(text.splitlines())
    assert f"{cut / 'metrics.jsonl'}: 2 line(s) are not a JSON row (line {n + 1}, {n + 2};" in err
    assert f"{cut / 'config.yaml'}: not valid YAML at line" in err
    assert f"{fresh / 'metrics.jsonl'}: no such file (the run logged no step yet)" in err
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines()[1:] if ln.strip()}
    assert rows["good"][1:3] == ["finished", "8/8"]
    assert rows["cut"][2] == "8"  # no config: the step without max_steps
    assert rows["fresh"][1:3] == ["not", "started"] and "empty" not in rows


def test_a_billion_laughs_config_yaml_is_a_note_not_a_hang(tmp_path):
    """RUNDIR/config.yaml goes through the bounded YAML reader too (issue 19 item 5): 9 levels
    of 9 aliases would be 387 million values."""
    laughs = "".join(f"{n}: &{n} [" + ",".join([f"*{p}"] * 9 if p else ["1"] * 9) + "]\n"
                     for p, n in zip([None, *"abcdefgh"], "abcdefghi"))
    (tmp_path / "config.yaml").write_text(laughs)
    summary = summarize(tmp_path)
    assert summary.config is None
    assert any(f"{tmp_path / 'config.yaml'}: not valid YAML at line" in n for n in summary.notes)
