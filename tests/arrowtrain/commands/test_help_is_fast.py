"""`arrowtrain export --help` and `arrowtrain sample --help` answer at once (issue 18 item 10: 6 s
of torch and DeepSpeed imports before argparse): neither --help nor a usage error imports torch.
(No timing is asserted: the import is what made it slow.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from launch.common import REPO

CHECK = ("import sys\nfrom arrowtrain.cli import main\n"
         "try: rc = main(sys.argv[1:])\nexcept SystemExit as e: rc = e.code\n"
         "print('TORCH', 'torch' in sys.modules, file=sys.stderr); sys.exit(rc)")


@pytest.mark.parametrize("argv, code", [
    (["export", "--help"], 0), (["sample", "--help"], 0),
    (["export", "run", "--format", "universal", "--out", "x"], 2),  # a usage error
    (["sample"], 2),
])
def test_help_and_usage_errors_import_no_torch(argv, code):
    res = subprocess.run([sys.executable, "-c", CHECK, *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == code, res.stderr
    assert "TORCH False" in res.stderr
    if code == 0:
        assert res.stdout.startswith("usage: arrowtrain " + argv[0])
