"""The `arrowtrain` command: one entry point whose --help lists every command without importing
torch, whose subcommands reach each module's own parser (same options as `python -m`), and whose
table grows by one row per new command (optional rows appear once their module exists)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.dist import REPO

from arrowtrain import cli

# What pip's generated `arrowtrain` script does, plus which heavy modules got imported.
SCRIPT = ("import sys\nfrom arrowtrain.cli import main\n"
          "try: rc = main(sys.argv[1:])\nexcept SystemExit as e: rc = e.code\n"
          "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
          "{'torch', 'deepspeed', 'pyarrow', 'numpy', 'tokenizers', 'matplotlib'}), "
          "file=sys.stderr)\nsys.exit(rc)")


def arrowtrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_console_script_is_declared_and_installed_by_make():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = meta["project"]["scripts"]["arrowtrain"]
    assert target == "arrowtrain.cli:main" and callable(cli.main)
    assert "arrowtrain*" in meta["tool"]["setuptools"]["packages"]["find"]["include"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "pretrain.__version__"
    assert "-e '.[dev]'" in (REPO / "Makefile").read_text()  # editable: .venv/bin/arrowtrain


def test_help_lists_every_command_and_imports_no_torch():
    res = arrowtrain("--help")
    assert res.returncode == 0, res.stderr
    for c in cli.available():
        assert f"  {c.words} " in res.stdout and c.summary in res.stdout
    for words in ("data shard", "launch local", "launch status", "launch demo", "train",
                  "export", "sample", "plot", "model"):
        assert f"  {words} " in res.stdout
    assert "HEAVY []" in res.stderr  # --help is instant: no torch, pyarrow, numpy, ...


def test_version_matches_the_package():
    import pretrain

    res = arrowtrain("--version")
    assert res.returncode == 0 and res.stdout == f"arrowtrain {pretrain.__version__}\n"
    assert "HEAVY []" in res.stderr


def test_a_typo_names_the_closest_command():
    res = arrowtrain("trian", "--config", "x.yaml")
    assert res.returncode == 2
    assert "unknown command 'trian' (did you mean `arrowtrain train`?)" in res.stderr
    assert "Traceback" not in res.stderr
    res = arrowtrain("data", "shrad")  # the group's own parser names its subcommands
    assert res.returncode == 2 and "invalid choice: 'shrad'" in res.stderr


def test_no_command_prints_the_list_and_exits_2():
    res = arrowtrain()
    assert res.returncode == 2 and "launch local" in res.stderr


@pytest.mark.parametrize("cmd", [c for c in cli.COMMANDS if not c.optional],
                         ids=lambda c: c.words)
def test_every_command_reaches_its_module_with_its_own_name(cmd, capsys):
    """`arrowtrain WORDS --help` is the module's parser, its usage names the short form."""
    with pytest.raises(SystemExit) as done:
        cli.main([*cmd.words.split(), "--help"])
    assert done.value.code == 0
    assert f"usage: arrowtrain {cmd.words} " in capsys.readouterr().out


def test_python_m_forms_still_work():
    for module in ("data_tools", "launch", "arrowtrain.commands.plot", "arrowtrain"):
        res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "usage:" in res.stdout, (module, res.stderr)


def test_optional_commands_appear_only_when_their_module_exists(monkeypatch, capsys):
    """How translate / attention / import-hf join: one row each; shown once merged."""
    rows = (*cli.COMMANDS,
            cli.Command("later", "arrowtrain.commands.no_such_module", "not merged yet",
                        optional=True),
            cli.Command("now", "arrowtrain.commands.plot", "merged", optional=True))
    monkeypatch.setattr(cli, "COMMANDS", rows)
    names = [c.words for c in cli.available(rows)]
    assert "now" in names and "later" not in names
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  now " in out and "later" not in out
    assert cli.main(["later"]) == 2 and "unknown command 'later'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli.main(["now", "--help"])
    assert done.value.code == 0 and "usage: arrowtrain now " in capsys.readouterr().out


@pytest.mark.parametrize("argv, usage", [
    (["data", "shard", "--help"], "usage: arrowtrain data shard "),
    (["launch", "status", "--help"], "usage: arrowtrain launch status "),
    (["train", "--help"], "usage: arrowtrain train "),
    (["launch", "demo", "--help"], "usage: arrowtrain launch demo "),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_python_m_arrowtrain_dispatches_to_the_subcommand(argv, usage):
    """The real module entry (what `.venv/bin/arrowtrain` runs), in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-m", "arrowtrain", *argv], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(usage), res.stdout[:300]


def test_python_m_arrowtrain_version_and_a_real_subcommand_run(tmp_path):
    import pretrain

    res = subprocess.run([sys.executable, "-m", "arrowtrain", "--version"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == f"arrowtrain {pretrain.__version__}\n"
    res = subprocess.run([sys.executable, "-m", "arrowtrain", "launch", "status",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "state: not started" in res.stdout, res.stderr
