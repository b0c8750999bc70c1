"""Config mechanics: malformed overrides are collected (none hides another), problems are told
apart by where they came from, unknown keys name the closest known one."""

from __future__ import annotations

import pytest

from pretrain.configlib import (
    COMMAND_LINE,
    ConfigError,
    Problem,
    apply_overrides,
    attribute,
    parse_overrides,
    unknown_key_hint,
)
from pretrain.train.config import RunConfig


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
    (("checkpoint", "zzzzzz"), "known keys here: async, every_steps, keep_last, save_at_end"),
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
