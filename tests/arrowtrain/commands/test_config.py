"""`arrowtrain config list` (every shipped config with the first line of its leading comment) and
`arrowtrain config explain [SECTION|KEY]` (type, default, allowed values, meaning), read from the
typed pydantic config itself; docs/config.md is that reference in Markdown and must be current."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.dist import REPO

from arrowtrain.commands.config import explain_text, markdown, purpose, reference, shipped
from pretrain.objectives import REGISTRY
from pretrain.train.config import OptimConfig, RunConfig, ScheduleConfig

# What `arrowtrain config ...` runs, plus whether torch got imported.
SCRIPT = ("import sys\nfrom arrowtrain.cli import main\nrc = main(sys.argv[1:])\n"
          "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(rc)")


def arrowtrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_list_shows_every_shipped_config_with_its_purpose():
    res = arrowtrain("config", "list")
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stderr
    files = [f for _, group in shipped() for f in group]
    assert {f.name for f in files} >= {"demo.yaml", "own-corpus-cpu.yaml", "gpt2-124m.yaml",
                                      "t5-base.yaml", "llama-1.1b.yaml"}
    assert len(files) == len(list((REPO / "configs").rglob("*.yaml")))
    for f in files:
        line = next(ln for ln in res.stdout.splitlines()
                    if ln.split()[:1] == [str(f.relative_to(REPO))])
        assert purpose(f) and line.endswith(purpose(f))
        assert len(purpose(f)) <= 98, f"{f}: the purpose is the first line, keep it short"
    assert "(no leading comment)" not in res.stdout


def test_explain_reads_the_typed_config(capsys):
    lr = explain_text("optim.lr")
    assert lr.splitlines()[0] == "optim.lr: float, > 0; default 0.0003"
    assert OptimConfig.model_fields["lr"].description in lr
    name = explain_text("schedule.name")
    for choice in ("constant", "cosine", "linear", "wsd", "inverse_sqrt"):
        assert choice in name.splitlines()[0]
    assert ScheduleConfig.model_fields["name"].description.split()[0] in name
    assert explain_text("lr") == lr  # a last part alone names the key
    every = [ln.split(":")[0] for ln in explain_text("every_steps").splitlines()
             if not ln.startswith(" ")]
    assert every == ["checkpoint.every_steps", "logging.every_steps", "eval.every_steps"]
    ac = [ln.split(":")[0] for ln in explain_text("train.activation_checkpointing").splitlines()
          if not ln.startswith(" ")]
    assert ac == ["train.activation_checkpointing", *(f"train.activation_checkpointing.{k}"
                                                      for k in ("mode", "every_n",
                                                                "selective_mm"))]
    assert explain_text("model").startswith("model: section (required)\n")
    assert "model.activation_checkpointing" not in explain_text("model")  # a moved key
    with pytest.raises(KeyError, match=r"did you mean `optim.lr`"):
        explain_text("optim.lrr")


def test_every_key_is_described_in_the_config_classes():
    """One source of truth: each key's Field(description=...); a new key without one fails."""
    docs = reference()
    assert len(docs) > 90
    assert [d.key for d in docs if not d.meaning] == []
    assert {d.key for d in docs if "." not in d.key} == set(RunConfig.model_fields)
    objective = next(d for d in docs if d.key == "data.objective")
    for name in REGISTRY:  # a registered objective the description leaves out fails here
        assert f"{name}:" in objective.meaning and name in objective.allowed


def test_docs_config_md_is_the_generated_reference():
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == markdown(), (
        "docs/config.md is stale: run `arrowtrain config explain --markdown > docs/config.md`")


def test_explain_from_the_command_line():
    res = arrowtrain("config", "explain", "deepspeed.zero_stage")
    assert res.returncode == 0 and "TORCH False" in res.stderr
    assert res.stdout.startswith("deepspeed.zero_stage: one of 0, 1, 2, 3; default 0\n")
    res = arrowtrain("config", "explain", "optim.lrr")
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert "no config key or section 'optim.lrr' (did you mean `optim.lr`" in res.stderr
    res = arrowtrain("config", "explain", "optim", "--markdown")
    assert res.returncode == 2 and "--markdown prints the whole reference" in res.stderr
    res = arrowtrain("config", "explain", "--markdown")
    assert res.returncode == 0 and res.stdout == markdown()
