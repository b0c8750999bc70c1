"""arrowtrain config list | arrowtrain config explain [SECTION|KEY] [--markdown]

`list`: the shipped configs (configs/*.yaml, runs; configs/model/*.yaml, models a run names with
`model: {base: model/NAME.yaml}`), each with its purpose: the first line of its leading comment.

`explain`: every key of a run config with its type, default, allowed values and meaning, read
from the typed config itself (pydantic `Field(description=...)` of RunConfig and its sections:
pretrain/train/config.py, pretrain/model/config.py, pretrain/data/config.py,
pretrain/objectives). SECTION (`optim`, `model`, `train.activation_checkpointing`) narrows it to
that section, KEY (`optim.lr`) to one key; a last part alone (`lr`, `every_steps`) names every
key ending so. `--markdown` prints the reference as docs/config.md holds it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from arrowtrain.cmdline import command_parser
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

log = logging.getLogger("arrowtrain.commands.config")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
MARKDOWN_TITLE = "Config reference"
MARKDOWN_INTRO = (
    "Every key of a run config (`configs/*.yaml`; the `model` section is what "
    "`configs/model/*.yaml` hold) with its type, default, allowed values and meaning. Generated "
    "from the typed config — the pydantic `Field(description=...)` of each key in "
    "pretrain/train/config.py, pretrain/model/config.py, pretrain/data/config.py and "
    "pretrain/objectives/registry.py — by `arrowtrain config explain --markdown > "
    "docs/config.md`: edit the descriptions there, not this file (a test fails when it is "
    "stale). Checks across keys (`n_heads` divides `d_model`, the batch layout, ...) run when a "
    "config is read: [training.md](training.md#a-run-config). The shipped configs and their "
    "purpose: `arrowtrain config list`.")


def purpose(path: Path) -> str | None:
    """The first line of a YAML file's leading comment, or None when it has none."""
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    text = first[1:].strip() if first.startswith("#") else ""
    return text or None


def shipped() -> list[tuple[str, list[Path]]]:
    """(heading, the YAML files under it): run configs, then model configs."""
    return [("run configs (arrowtrain launch local --config configs/NAME.yaml):",
             sorted(CONFIGS.glob("*.yaml"))),
            ("model configs (model: {base: model/NAME.yaml} in a run config):",
             sorted((CONFIGS / "model").glob("*.yaml")))]


def list_text() -> str:
    out = []
    for heading, files in shipped():
        names = [str(f.relative_to(REPO)) for f in files]
        width = max((len(n) for n in names), default=0) + 2
        out += ([""] if out else []) + [heading]
        for name, f in zip(names, files):
            out.append(f"  {name.ljust(width)}{purpose(f) or '(no leading comment)'}")
    return "\n".join(out) + "\n"


def reference():
    """Every key of a run config (pretrain.configdoc.KeyDoc), from RunConfig itself."""
    from pretrain.configdoc import describe
    from pretrain.train.config import RunConfig

    return describe(RunConfig)


def markdown() -> str:
    from pretrain.configdoc import as_markdown

    return as_markdown(reference(), MARKDOWN_TITLE, MARKDOWN_INTRO)


def explain_text(name: str | None) -> str:
    """The reference of `name` (a section, a key or a key's last part; None: all). Raises
    KeyError with the message to show when nothing is called so."""
    from pretrain.configdoc import as_text, close_keys, lookup

    docs = reference()
    if not name:
        return as_text(docs)
    found = lookup(docs, name)
    if not found:
        ending = [d.key for d in docs if d.key.rsplit(".", 1)[-1] == name]
        found = [d for k in ending for d in lookup(docs, k)]
    if found:
        return as_text(found)
    close = close_keys(docs, name)
    hint = f" (did you mean {', '.join(f'`{k}`' for k in close)}?)" if close else ""
    sections = ", ".join(d.key for d in docs if d.section and "." not in d.key)
    raise KeyError(f"no config key or section {name!r}{hint}; the sections: {sections} "
                   "(`arrowtrain config explain` lists every key)")


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = command_parser(prog or "python -m arrowtrain.commands.config", __doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,explain}")
    sub.add_parser("list", help="the shipped run and model configs, one line of purpose each",
                   description="The shipped configs and their purpose (the first line of each "
                   "file's leading comment).")
    ex = sub.add_parser("explain", help="type, default, allowed values and meaning of config "
                        "keys", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("name", nargs="?", default=None, metavar="SECTION|KEY",
                    help="a section (optim), a key (optim.lr) or a key's last part (lr); "
                    "left out: every key")
    ex.add_argument("--markdown", action="store_true",
                    help="the whole reference as Markdown (what docs/config.md holds)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from pretrain.logs import setup_logging

    args = _parser(prog).parse_args(argv)
    setup_logging()
    if args.command == "list":
        if not CONFIGS.is_dir():
            log.error("%s: no such folder (config list reads the configs/ of the repository "
                      "arrowtrain runs from)", CONFIGS)
            return EXIT_CONFIG
        sys.stdout.write(list_text())
        return EXIT_OK
    if args.markdown:
        if args.name:
            log.error("--markdown prints the whole reference: leave out %s", args.name)
            return EXIT_CONFIG
        sys.stdout.write(markdown())
        return EXIT_OK
    try:
        sys.stdout.write(explain_text(args.name))
    except KeyError as e:
        log.error("%s", e.args[0])
        return EXIT_CONFIG
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
