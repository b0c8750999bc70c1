"""The distributed-test helper's `run_python`: a real process of its own, forked from the warm
interpreter where the import-time settings fit, with what `subprocess.run(capture_output=True,
text=True)` gives back — exit codes, stdout apart from stderr, stdin, a timeout."""

import os
import subprocess
import sys

import pytest

from helpers.dist import fork_server, rank_env, run_python
from pretrain.train.distenv import free_port

PROBE = ("import os, sys; print(os.getpid(), 'torch' in sys.modules, sys.stdin.read()); "
         "print('on stderr', file=sys.stderr); sys.exit(int(sys.argv[1]))")


def test_stdout_stderr_stdin_and_exit_code_come_back_apart():
    res = run_python(["-c", PROBE, "3"], input="from stdin")
    assert res.returncode == 3
    pid, preloaded, text = res.stdout.split(maxsplit=2)
    assert int(pid) != os.getpid() and text.strip() == "from stdin"
    assert preloaded == "True"  # forked from the interpreter that imported torch
    assert res.stderr == "on stderr\n"


def test_other_import_time_settings_start_a_fresh_interpreter_with_a_warning():
    with pytest.warns(UserWarning, match=r"fork server not used.*'OMP_NUM_THREADS': \('1', '3'\)"):
        res = run_python(["-c", PROBE, "0"], env={**os.environ, "OMP_NUM_THREADS": "3"})
    assert res.returncode == 0 and res.stdout.split()[1] == "False", res.stdout


def test_an_uncaught_error_exits_1_with_its_traceback_and_a_timeout_kills():
    res = run_python(["-c", "raise ValueError('boom')"])
    assert res.returncode == 1 and "ValueError: boom" in res.stderr
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(["-c", "import time; time.sleep(60)"], timeout=1)


def test_a_module_runs_as_main_from_the_working_directory(tmp_path):
    (tmp_path / "probe_mod.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    res = run_python(["-m", "probe_mod", "a", "b"], cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == "__main__ ['a', 'b']\n", res.stderr
    assert res.args[0] == sys.executable


def test_a_compile_in_this_process_keeps_the_ranks_on_the_fork_server():
    """torch's compiler sets TORCHINDUCTOR_CACHE_DIR on its first compile; the suite pins it at
    start (tests/conftest.py), or every later rank would be refused by the server."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert run_python(["-c", "pass"]).returncode == 0  # the server is up
    cache_dir()  # what the first torch.compile in this process does
    assert fork_server().fits(rank_env(0, 2, free_port()))


def test_the_projects_modules_come_preloaded_but_not_pyarrow():
    res = run_python(["-c", "import sys; print(sorted(m for m in ('pretrain.train.config', "
                      "'pretrain.model.decoder', 'pyarrow') if m in sys.modules))"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['pretrain.model.decoder', 'pretrain.train.config']"


def _reads_environment(node) -> bool:
    """An `os.environ[...]`, `os.environ.get(...)` or `os.getenv(...)` anywhere under node."""
    import ast

    for n in ast.walk(node):
        if isinstance(n, ast.Subscript) and ast.unparse(n.value) == "os.environ":
            return True
        if isinstance(n, ast.Call) and ast.unparse(n.func) in ("os.environ.get", "os.getenv"):
            return True
    return False


def test_no_preloaded_module_reads_the_environment_at_import_time():
    """The fork server imports `pretrain` once; its children run with other environments, so a
    value read at import would be the server's (functions read it when called)."""
    import ast
    from pathlib import Path

    import pretrain

    found = []
    for path in sorted(Path(pretrain.__path__[0]).rglob("*.py")):
        todo = list(ast.parse(path.read_text()).body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                todo += node.decorator_list + node.args.defaults + node.args.kw_defaults
                continue
            if isinstance(node, ast.ClassDef):
                todo += node.body + node.decorator_list + node.bases
                continue
            if node is not None and _reads_environment(node):
                found.append(f"{path}:{node.lineno}")
    assert found == []
