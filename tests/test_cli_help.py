"""Every `--help` of pretrain and launch: each option explains itself, states its default at most
once, and a required option or a None default never prints "(default: None)"."""

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
    from launch.__main__ import main as launch
    from launch.demo import main as demo
    from launch.signal_trainers import main as signal_trainers
    from launch.translate_demo import main as translate_demo
    from launch.translate_task import main as translate_task
    from pretrain.attention import main as attention
    from pretrain.export import main as export
    from pretrain.import_hf import main as import_hf
    from pretrain.model.__main__ import main as model
    from pretrain.plot import main as plot
    from pretrain.sample import main as sample
    from pretrain.train.__main__ import main as train
    from pretrain.translate import main as translate

    return {"pretrain.train": train, "pretrain.export": export, "pretrain.import_hf": import_hf,
            "pretrain.sample": sample,
            "pretrain.plot": plot, "pretrain.model": model, "launch": launch,
            "launch.demo": demo, "launch.signal_trainers": signal_trainers,
            "pretrain.translate": translate, "pretrain.attention": attention,
            "launch.translate_demo": translate_demo, "launch.translate_task": translate_task}


@pytest.mark.parametrize("name", ["pretrain.train", "pretrain.export", "pretrain.import_hf",
                                  "pretrain.sample",
                                  "pretrain.plot", "pretrain.model", "launch", "launch.demo",
                                  "launch.signal_trainers",
                                  "pretrain.translate", "pretrain.attention",
                                  "launch.translate_demo", "launch.translate_task"])
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
