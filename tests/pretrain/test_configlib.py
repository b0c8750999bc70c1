"""Config mechanics: malformed overrides are collected (none hides another), problems are told
apart by where they came from, unknown keys name the closest known one; the YAML reader bounds
aliases, size and depth and refuses duplicate keys, naming file and line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.configlib import (
    COMMAND_LINE,
    ConfigError,
    Problem,
    apply_overrides,
    attribute,
    load_yaml,
    parse_overrides,
    unknown_key_hint,
)
from pretrain.train.config import RunConfig

REPO = Path(__file__).resolve().parents[2]


def test_malformed_overrides_are_all_collected():
    parsed, problems = parse_overrides(["train.max_steps", "a.b=2", ".x=1", "c..d=3", "e.f= 4"])
    assert [(o.key, o.value) for o in parsed] == [("a.b", 2), ("e.f", 4)]
    texts = [p.text for p in problems]
    assert texts == ["override 'train.max_steps' is not of the form dotted.key=value",
                     "override '.x=1' has an empty key part",
                     "override 'c..d=3' has an empty key part"]
    assert all(p.origin == COMMAND_LINE for p in problems)
    with pytest.raises(ConfigError) as err:
        apply_overrides({}, ["train.max_steps", ".x=1", "ok=1"])
    assert len(err.value.problems) == 2 and "from the command line" in str(err.value)


@pytest.mark.parametrize("loc,hint", [
    (("optim", "lrr"), "did you mean `optim.lr`?"),
    (("optm",), "did you mean `optim`?"),
    (("logging", "wandb", "projet"), "did you mean `logging.wandb.project`?"),
    (("model", "n_layer"), "did you mean `model.n_layers`?"),
    (("data", "path", "list[MixEntry]", 0, "wieght"), "did you mean `data.path.0.weight`?"),
    (("checkpoint", "zzzzzz"), "known keys here: async, every_steps, keep_last, remote, remote_timeout, save_at_end"),
])
def test_unknown_keys_suggest_the_closest_known_one(loc, hint):
    assert hint in unknown_key_hint(RunConfig, loc)


def test_problems_from_the_command_line_are_grouped_and_name_the_override():
    overrides, _ = parse_overrides(["optim.lrr=1", "optm.lr=2", "train.micro_batch_size=3",
                                    "model.d_model=30"])
    file_data = {"model": {"n_heads": 4}, "train": {"global_batch_size": 8}}
    problems = attribute([
        Problem("optim.lrr: unknown key", ("optim.lrr",)),
        Problem("optm: unknown key", ("optm",)),  # the whole section exists only on the CLI
        Problem("batch does not divide", ("train.global_batch_size", "train.micro_batch_size")),
        Problem("model: heads do not divide", ("model",)),
        Problem("seed: bad", ("seed",)),
    ], overrides, file_data)
    by_text = {p.text.split(" (")[0]: p for p in problems}
    assert by_text["optim.lrr: unknown key"].origin == COMMAND_LINE
    assert "(from `optim.lrr=1`)" in by_text["optim.lrr: unknown key"].text
    assert by_text["optm: unknown key"].origin == COMMAND_LINE
    mixed = by_text["batch does not divide"]
    assert mixed.origin is None and "with `train.micro_batch_size=3` from" in mixed.text
    assert "with `model.d_model=30`" in by_text["model: heads do not divide"].text
    assert by_text["seed: bad"].text == "seed: bad"

    text = str(ConfigError(problems, "run.yaml"))
    assert text.startswith("5 config problem(s):\n  in run.yaml:\n    - ")
    file_part, cli_part = text.split("  from the command line:\n")
    assert "optim.lrr" in cli_part and "optm" in cli_part and "optim.lrr" not in file_part
    assert "seed: bad" in file_part


def test_one_origin_keeps_the_one_line_header():
    assert str(ConfigError(["a", "b"], "x.yaml")) == "2 config problem(s) in x.yaml:\n  - a\n  - b"
    only_cli = ConfigError([Problem("a", origin=COMMAND_LINE)], "x.yaml")
    assert str(only_cli).startswith("1 config problem(s) from the command line:")
    assert "x.yaml" not in str(only_cli)


# ---- the YAML reader: bounded, strict about duplicates (issue 19 item 5) --------------------

LAUGHS = "".join(
    f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9 if prev else ['"lol"'] * 9) + "]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi"))


def _trainer_config(tmp_path, text: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """`python -m pretrain.train --config FILE --print-config` in a child capped at 2 GB of
    address space (what the user runs; a config that blows up cannot take the machine down)."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))"
    return subprocess.run([sys.executable, "-c", f"{limit}; import sys; from pretrain.train."
                           "__main__ import main; sys.exit(main())", "--config", str(path),
                           "--print-config"], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_billion_laughs_is_refused_at_once_naming_the_file(tmp_path):
    proc = _trainer_config(tmp_path, LAUGHS)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'run.yaml'}" in proc.stderr and "aliases" in proc.stderr


def test_many_aliases_are_refused(tmp_path):
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 5000) + "]\n"
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"(?s)c\.yaml.*aliases"):
        load_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize("text", ["x: " + "[" * 20000 + "]" * 20000 + "\n",
                                  "x:\n" + "".join(" " * i + "- \n" for i in range(500)),
                                  "x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"])
def test_deep_nesting_is_a_config_error_naming_the_line(tmp_path, text):
    (tmp_path / "deep.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_yaml(tmp_path / "deep.yaml")
    assert "deep.yaml" in str(e.value) and "line" in str(e.value) and "nested" in str(e.value)


def test_deep_or_exploding_override_values_are_refused():
    _, problems = parse_overrides(["x=" + "[" * 20000 + "]" * 20000, "y=[1, 2]"])
    assert len(problems) == 1 and "nested" in problems[0].text and "x=" in problems[0].text


def test_a_duplicated_section_is_refused_naming_both_lines(tmp_path):
    (tmp_path / "dup.yaml").write_text("train:\n  max_steps: 5\noptim:\n  lr: 0.1\n"
                                       "train:\n  micro_batch_size: 2\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(tmp_path / "dup.yaml")
    msg = str(e.value)
    assert "dup.yaml" in msg and "duplicate key 'train'" in msg
    assert "line 5" in msg and "line 1" in msg


def test_duplicate_nested_keys_are_refused_but_merge_keys_still_work(tmp_path):
    (tmp_path / "n.yaml").write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_yaml(tmp_path / "n.yaml")
    (tmp_path / "m.yaml").write_text("base_opt: &o {lr: 0.1, wd: 0.0}\n"
                                     "optim:\n  <<: *o\n  lr: 0.3\n")
    assert load_yaml(tmp_path / "m.yaml")["optim"] == {"lr": 0.3, "wd": 0.0}


def test_a_config_that_never_ends_is_refused_by_size(tmp_path):
    """A character device like /dev/zero (made here with mknod, never the machine's), read in a
    capped child so that the old unbounded read cannot hurt."""
    dev = tmp_path / "zero"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))"
    proc = subprocess.run([sys.executable, "-c", f"{limit}\nfrom pretrain.configlib import "
                           f"load_yaml\nload_yaml({str(dev)!r})"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert "ConfigError" in proc.stderr and "larger than" in proc.stderr, proc.stderr[-2000:]
