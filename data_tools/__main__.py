"""python -m data_tools {train-tokenizer,shard,validate,inspect} ... (see --help of each)."""

from __future__ import annotations

import argparse
import logging
import sys

from data_tools.errors import DataToolsError
from data_tools.exit_codes import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK

COMMANDS = {
    "train-tokenizer": ("data_tools.tokenizer", "train a byte-level BPE tokenizer on raw text"),
    "shard": ("data_tools.shard", "tokenize raw text into Arrow IPC shards with a manifest"),
    "validate": ("data_tools.validate", "check a shard folder: schema, checksums, token range"),
    "inspect": ("data_tools.inspect_cmd", "counts, lengths and decoded samples of a shard folder"),
    "copy": ("data_tools.copy", "copy a shard folder to or from object storage (s3://), verified"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; '(default: X)' only where it tells something: not for required
    options, switches, options without a default, or help that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or not action.option_strings or "default" in text
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    import importlib
    parser = argparse.ArgumentParser(prog=prog or "python -m data_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=mod.__doc__,
                           formatter_class=HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(run=getattr(mod, "main", None) or mod.train)
    return parser


def setup_logging(name: str) -> None:
    """Progress and notes on stderr, each line starting with the command as the user typed it
    (`arrowtrain data shard: ...`, or `python -m data_tools shard: ...`)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"{name}: %(message)s")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m data_tools"
    args = build_parser(prog).parse_args(argv)
    name = f"{prog} {args.command}"
    setup_logging(name)
    try:
        result = args.run(args)
    except DataToolsError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:  # e.g. `inspect ... | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        hint = "; run the same command again to resume" if args.command in ("shard", "copy") \
            else ""
        print(f"{name}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
