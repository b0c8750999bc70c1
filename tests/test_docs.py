"""The docs cannot drift from the code.

Every `arrowtrain ...` command line in README.md, CHANGELOG.md and docs/*.md (in code blocks and
in inline code) names a command of arrowtrain/cli.py's table, and every flag on it is one that
command's own argparse parser accepts; a concrete line (no `[optional]` part, no `...`, no
`a|b` alternatives) must parse as a whole. The parsers are caught where each command's main()
would parse, so nothing runs. Every `python -m MODULE` form (outside the changelog, which names
the forms that moved) imports, every relative link and anchor resolves, every command of the
table is in the README, and the README stays a 5-minute read (at most 250 lines)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from arrowtrain import cli

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
OUR_PACKAGES = {"arrowtrain", "data_tools", "launch", "pretrain", "benchmarks"}
SHELL_CUTS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1", "="}
SYNOPSIS_MARKS = ("[", "]", "...", "…", "{", "}")


def doc_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


@dataclass(frozen=True)
class Snippet:
    file: Path
    line: int
    text: str
    block: bool = True  # a code-block line (parsed whole when concrete), else inline code

    def __str__(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}: {self.text}"


def _fences(lines: list[str]) -> list[bool]:
    """For each line: is it inside a fenced code block (the fence lines included)?"""
    inside, out = False, []
    for line in lines:
        fence = line.lstrip().startswith(("```", "~~~"))
        out.append(inside or fence)
        if fence:
            inside = not inside
    return out


def _prose(text: str) -> str:
    """The text with fenced blocks blanked out (line numbers kept)."""
    lines = text.split("\n")
    return "\n".join("" if f else line for line, f in zip(lines, _fences(lines)))


def _block_commands(path: Path, lines: list[str], fenced: list[bool]) -> list[Snippet]:
    """Command lines inside code blocks: `\\` continuations joined, a `$ ` prompt dropped, and an
    indented `[--flag ...]` line after a command taken as its continuation (synopses)."""
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        if not fenced[i]:
            i += 1
            continue
        start, text = i, lines[i].strip()
        while text.endswith("\\") and i + 1 < len(lines) and fenced[i + 1]:
            i += 1
            text = text[:-1].rstrip() + " " + lines[i].strip()
        text = text[2:] if text.startswith("$ ") else text
        if re.match(r"(\S*/)?arrowtrain(\s|$)", text):
            while (i + 1 < len(lines) and fenced[i + 1] and lines[i + 1][:1].isspace()
                   and lines[i + 1].strip().startswith(("[-", "--"))):
                i += 1
                text += " " + lines[i].strip()
            out.append(Snippet(path, start + 1, text))
        i += 1
    return out


def _inline_commands(path: Path, text: str) -> list[Snippet]:
    prose = _prose(text)
    out = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        body = " ".join(m.group(1).split())
        if re.match(r"arrowtrain(\s|$)", body):
            out.append(Snippet(path, prose.count("\n", 0, m.start()) + 1, body, block=False))
    return out


def command_snippets() -> list[Snippet]:
    out: list[Snippet] = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        out += _block_commands(path, lines, _fences(lines)) + _inline_commands(path, text)
    return out


def module_snippets() -> list[Snippet]:
    """`python -m X` forms; not the changelog's, which names the forms that moved away."""
    out = []
    for path in (p for p in doc_files() if p.name != "CHANGELOG.md"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"\bpython3?\s+-m\s+([\w.|{},]+)", text):
            out.append(Snippet(path, text.count("\n", 0, m.start()) + 1, m.group(1).rstrip(".,")))
    return out


# ---- the CLI's own parsers, caught where main() would parse ----

class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, method: str):
        self.parser, self.method = parser, method


@functools.cache
def captured(module: str) -> tuple[argparse.ArgumentParser, str]:
    """The parser `module.main` builds and the parse method it calls (nothing runs)."""
    main = importlib.import_module(module).main

    def grab(method):
        def raise_parsed(self, *args, **kwargs):
            raise _Parsed(self, method)
        return raise_parsed

    kwargs = {"prog": "arrowtrain"} if "prog" in inspect.signature(main).parameters else {}
    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab("parse_args")), \
            mock.patch.object(argparse.ArgumentParser, "parse_intermixed_args",
                              grab("parse_intermixed_args")):
        try:
            main([], **kwargs)
        except _Parsed as caught:
            return caught.parser, caught.method
    raise AssertionError(f"{module}.main([]) returned without building a parser")


def _subparser(parser: argparse.ArgumentParser, word: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and word in action.choices:
            return action.choices[word]
    raise AssertionError(f"{parser.prog}: no subcommand {word!r}")


@dataclass(frozen=True)
class Target:
    """What a command line's words name: the parser of its flags, and how to parse it whole."""
    words: str
    flags_parser: argparse.ArgumentParser
    parser: argparse.ArgumentParser
    method: str
    lead: tuple[str, ...]  # words the whole-line parser sees before the arguments


def target(words: str) -> Target:
    """`data shard` -> data_tools' parser (subcommand shard); `data` alone -> the group's."""
    if words in cli.GROUPS:
        parser, method = captured(cli.GROUPS[words][0])
        return Target(words, parser, parser, method, ())
    cmd = next(c for c in cli.available() if c.words == words)
    parser, method = captured(cmd.module)
    if cmd.group and cmd.module == cli.GROUPS[cmd.group][0]:
        sub = words.split()[1]
        return Target(words, _subparser(parser, sub), parser, method, (sub,))
    return Target(words, parser, parser, method, ())


# ---- reading a command line ----

def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in a synopsis
        return text.split()


def _alternatives(word: str) -> list[str]:
    m = re.fullmatch(r"\{([^{}]*)\}", word)
    return [w for w in (m.group(1).split(",") if m else word.split("|")) if w]


def _placeholder(word: str) -> bool:
    """COMMAND, RUNDIR, `...`: a stand-in, not a word of the command."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|\.\.\.|…", word))


def resolve(tokens: list[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """[(command words, their arguments)] for each alternative a line names, and problems."""
    rest = tokens[1:]
    if not rest or _placeholder(rest[0]):
        return [], []  # the program named alone, or `arrowtrain COMMAND`
    if rest[0].startswith("-"):
        bad = [t for t in rest if t.startswith("-") and t not in ("-h", "--help", "--version")]
        return [], [f"`arrowtrain` takes no option {b}" for b in bad]
    known = {c.words for c in cli.available()}
    found, problems = [], []
    for first in _alternatives(rest[0]):
        if first in cli.GROUPS:
            second = rest[1] if len(rest) > 1 else ""
            if not second or second.startswith("-") or _placeholder(second):
                found.append((first, rest[1:] if second.startswith("-") else rest[2:]))
                continue
            for sub in _alternatives(second):
                words = f"{first} {sub}"
                if words in known:
                    found.append((words, rest[2:]))
                else:
                    problems.append(f"unknown command `arrowtrain {words}`")
        elif first in known:
            found.append((first, rest[1:]))
        else:
            problems.append(f"unknown command `arrowtrain {first}` (the table has: "
                            f"{', '.join(sorted(known))})")
    return found, problems


def _flag_names(token: str) -> list[str]:
    names = []
    for piece in token.strip("[](),").split("|"):
        piece = piece.strip("[](),")
        if piece.startswith("-") and len(piece) > 1 and not re.match(r"-[\d.]", piece):
            names.append(piece.split("=", 1)[0])
    return names


def _cut(tokens: list[str], synopsis: bool) -> list[str]:
    """The command alone: up to a shell operator (in a synopsis `|` separates alternatives)."""
    for i, t in enumerate(tokens):
        if (t in SHELL_CUTS and not (synopsis and t == "|")) or re.match(r"\d?>", t):
            return tokens[:i]
    return tokens


def parse_whole(t: Target, args: list[str]) -> str | None:
    """None when the parser accepts the line, else argparse's message."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            getattr(t.parser, t.method)([*t.lead, *args])
        except SystemExit as e:
            if e.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(e)
    return None


def problems_of(snippet: Snippet) -> list[str]:
    """What is wrong with one command line: an unknown command or flag; for a concrete
    code-block line with arguments, also what the command's own parser refuses. Inline code in
    prose may name a command or some of its flags alone, so it is checked flag by flag."""
    synopsis = any(m in snippet.text for m in SYNOPSIS_MARKS)
    tokens = _tokens(snippet.text)
    synopsis = synopsis or any("|" in t and t != "|" for t in tokens)
    tokens = _cut(tokens, synopsis)
    found, problems = resolve(tokens)
    for words, args in found:
        t = target(words)
        accepted = t.flags_parser._option_string_actions
        long_flags = ", ".join(sorted(o for o in accepted if o.startswith("--")))
        for token in args:
            for name in _flag_names(token):
                if name not in accepted:
                    problems.append(f"`arrowtrain {words}` has no option {name} "
                                    f"(it has: {long_flags})")
        if snippet.block and args and not synopsis and not problems:
            message = parse_whole(t, args)
            if message:
                problems.append(f"`arrowtrain {words}` refuses this line: {message}")
    return problems


COMMAND_SNIPPETS = command_snippets()
MODULE_SNIPPETS = module_snippets()


def test_the_docs_hold_command_lines():
    """The collector finds the README's own examples (a regex that matched nothing would pass
    every check below)."""
    readme = [s for s in COMMAND_SNIPPETS if s.file.name == "README.md"]
    assert len(readme) >= 10, readme
    assert any(s.text.startswith("arrowtrain data shard") for s in readme)
    assert any(s.text.startswith("arrowtrain launch local") for s in readme)


@pytest.mark.parametrize("snippet", COMMAND_SNIPPETS, ids=lambda s: f"{s.file.name}:{s.line}")
def test_command_line_matches_the_cli(snippet):
    problems = problems_of(snippet)
    assert not problems, f"{snippet}\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("snippet", MODULE_SNIPPETS, ids=lambda s: f"{s.file.name}:{s.line}")
def test_python_m_form_imports(snippet):
    module = snippet.text
    assert not re.search(r"[|{},]", module), f"{snippet}: write each module form in full"
    if any(_placeholder(part) for part in module.split(".")):
        return  # `python -m arrowtrain.commands.X`
    if module.split(".")[0] not in OUR_PACKAGES:
        assert importlib.util.find_spec(module) is not None, f"{snippet}: no module {module}"
        return
    mod = importlib.import_module(module)
    if hasattr(mod, "__path__"):  # a package runs its __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, \
            f"{snippet}: package {module} has no __main__"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).split("\n"):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_links_and_anchors_resolve():
    problems = []
    for path in doc_files():
        prose = _prose(path.read_text(encoding="utf-8"))
        for m in re.finditer(r"\]\(([^)\s]+)\)", prose):
            link = m.group(1)
            if re.match(r"[a-z]+:", link):
                continue  # https:, mailto:
            where = f"{path.relative_to(REPO)}:{prose.count(chr(10), 0, m.start()) + 1}"
            file, _, anchor = link.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                problems.append(f"{where}: {link}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: {link}: no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_readme_is_short_and_links_every_doc():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    n = len(readme.splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md"))
               if f"(docs/{p.name}" not in readme]
    assert not missing, f"README.md links no docs/{missing}"


def test_readme_names_every_command():
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    missing = [c.words for c in cli.available() if f"arrowtrain {c.words}" not in readme]
    assert not missing, f"README.md never shows `arrowtrain {missing[0]}` (all missing: {missing})"


# ---- the checker itself ----

def _problems(text: str) -> list[str]:
    return problems_of(Snippet(REPO / "README.md", 1, text))


def test_checker_flags_an_unknown_command_and_an_unknown_flag():
    assert _problems("arrowtrain data shard x --tokenizer t.json --out d") == []
    assert "unknown command `arrowtrain data shred`" in _problems("arrowtrain data shred x")[0]
    assert "unknown command `arrowtrain frobnicate`" in _problems("arrowtrain frobnicate")[0]
    assert "has no option --nprocs" in _problems("arrowtrain launch local --config c --nprocs 2")[0]
    assert "has no option --bogus" in _problems("arrowtrain export RUNDIR [--bogus X]")[0]


def test_checker_parses_concrete_lines_whole_and_synopses_by_flag():
    assert "refuses" in _problems("arrowtrain launch local --nproc 2")[0]  # --config missing
    assert _problems("arrowtrain launch local --config C [--nproc N] [KEY=VALUE ...]") == []
    assert _problems("arrowtrain sample RUNDIR --prompt 'def ' > out.txt  # a comment") == []
    assert _problems("arrowtrain {export,translate} RUNDIR [--tag T]") == []
    both = _problems("arrowtrain {export,sample} RUNDIR [--tag T]")
    assert len(both) == 1 and "`arrowtrain sample` has no option --tag" in both[0]
    assert _problems("arrowtrain launch local|slurm --config C [--print-config]") == []
    assert _problems("arrowtrain --help") == [] and _problems("arrowtrain COMMAND") == []


def test_collector_reads_blocks_continuations_and_inline_code(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text `arrowtrain data\ninspect d` more\n```bash\n$ arrowtrain launch local \\\n"
                   "    --config c\narrowtrain export RUNDIR\n    [--tag T]\n```\n")
    lines = doc.read_text().split("\n")
    blocks = _block_commands(doc, lines, _fences(lines))
    assert [(s.line, s.text) for s in blocks] == [
        (4, "arrowtrain launch local --config c"), (6, "arrowtrain export RUNDIR [--tag T]")]
    assert [(s.line, s.text) for s in _inline_commands(doc, doc.read_text())] == [
        (1, "arrowtrain data inspect d")]
