"""Every `--help` of pretrain, launch and arrowtrain: each option explains itself, states its
default at most once, and a required option or a None default never prints "(default: None)"."""

from __future__ import annotations

import argparse
import re

import pytest


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _capture(monkeypatch, main, argv) -> list[argparse.ArgumentParser]:
    """The parser(s) `main` builds, caught where it would parse (nothing runs)."""
    def grab(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args", grab)
    with pytest.raises(_Parsed) as caught:
        main(argv)
    parser = caught.value.parser
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *(p for s in subs for p in s.choices.values())]


def _mains():
    from arrowtrain.commands.attention import main as attention
    from arrowtrain.commands.config import main as config
    from arrowtrain.commands.coord_check import main as coord_check
    from arrowtrain.commands.export import main as export
    from arrowtrain.commands.import_hf import main as import_hf
    from arrowtrain.commands.model import main as model
    from arrowtrain.commands.plan import main as plan
    from arrowtrain.commands.plot import main as plot
    from arrowtrain.commands.runs import main as runs
    from arrowtrain.commands.sample import main as sample
    from arrowtrain.commands.sweep import main as sweep
    from arrowtrain.commands.translate import main as translate
    from arrowtrain.demos.demo import main as demo
    from arrowtrain.demos.translate_demo import main as translate_demo
    from arrowtrain.demos.translate_task import main as translate_task
    from launch.__main__ import main as launch
    from launch.signal_trainers import main as signal_trainers
    from pretrain.train.__main__ import main as train

    return {"pretrain.train": train, "launch": launch, "launch.signal_trainers": signal_trainers,
            "arrowtrain.commands.export": export, "arrowtrain.commands.import_hf": import_hf,
            "arrowtrain.commands.sample": sample, "arrowtrain.commands.plot": plot,
            "arrowtrain.commands.model": model, "arrowtrain.commands.translate": translate,
            "arrowtrain.commands.plan": plan,
            "arrowtrain.commands.attention": attention, "arrowtrain.commands.config": config,
            "arrowtrain.commands.runs": runs, "arrowtrain.demos.demo": demo,
            "arrowtrain.commands.coord_check": coord_check, "arrowtrain.commands.sweep": sweep,
            "arrowtrain.demos.translate_demo": translate_demo,
            "arrowtrain.demos.translate_task": translate_task}


@pytest.mark.parametrize("name", ["pretrain.train", "launch", "launch.signal_trainers",
                                  "arrowtrain.commands.export", "arrowtrain.commands.import_hf",
                                  "arrowtrain.commands.sample", "arrowtrain.commands.plot",
                                  "arrowtrain.commands.model", "arrowtrain.commands.translate",
                                  "arrowtrain.commands.plan",
                                  "arrowtrain.commands.attention", "arrowtrain.commands.config",
                                  "arrowtrain.commands.runs", "arrowtrain.demos.demo",
                                  "arrowtrain.commands.coord_check", "arrowtrain.commands.sweep",
                                  "arrowtrain.demos.translate_demo",
                                  "arrowtrain.demos.translate_task"])
def test_every_option_has_help_and_states_its_default_once(name, monkeypatch):
    parsers = _capture(monkeypatch, _mains()[name], [])
    assert parsers
    for parser in parsers:
        text = parser.format_help()
        assert "(default: None)" not in text and "%(default)" not in text
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help text"
            defaults = len(re.findall(r"\bdefault\b", action.help))
            assert defaults <= 1, f"{where} states its default {defaults} times"
            if action.required:
                assert defaults == 0, f"{where} is required yet names a default"
