"""pretrain.exit_codes: one table of exit codes; the shared numbers come from data_tools (the
layer below, whose own CLI exits with them), the trainer's 75 is added here."""

from __future__ import annotations

import subprocess
import sys

from data_tools import exit_codes as bottom
from pretrain.exit_codes import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_RESUME, describe_exit


def test_describe_exit():
    assert "resume" in describe_exit(EXIT_RESUME) and "signal 9" in describe_exit(137)
    assert describe_exit(EXIT_INTERRUPTED) == "interrupted (Ctrl-C)"
    assert describe_exit(EXIT_CONFIG) == "config or data error" and describe_exit(7) == "failed"


def test_the_numbers_are_written_once_and_import_nothing():
    assert (EXIT_OK, EXIT_CONFIG, EXIT_INTERRUPTED) == (bottom.EXIT_OK, bottom.EXIT_CONFIG,
                                                        bottom.EXIT_INTERRUPTED)
    code = ("import sys, pretrain.exit_codes; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'pyarrow', 'pydantic', 'yaml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
