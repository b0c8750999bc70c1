"""`launch local` without training: exit-code rules and the config check before any start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launch.common import REPO, combine_exit_codes, describe_exit


@pytest.mark.parametrize("codes,expected", [
    ([0, 0], 0), ([75, 75], 75), ([0, 75], 75), ([75, 2], 2), ([1, 75], 1), ([0, 3, 1], 3),
    ([-9, 0], 137), ([75, -15], 143),
])
def test_combine_exit_codes(codes, expected):
    assert combine_exit_codes(codes) == expected


def test_describe_exit():
    assert "resume" in describe_exit(75) and "signal 9" in describe_exit(137)


def test_config_errors_exit_2_before_any_rank_starts(tmp_path):
    cfg = tmp_path / "bad.yaml"
    run_dir = tmp_path / "run"
    cfg.write_text(f"run_dir: {run_dir}\nbogus_key: 1\ntrain: {{max_steps: -1}}\n")
    res = subprocess.run([sys.executable, "-m", "launch", "local", "--config", str(cfg),
                          "--nproc", "2", "optim.lr=fast"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    for key in ("bogus_key", "train.max_steps", "optim.lr", "model"):
        assert key in res.stderr
    assert "[rank" not in res.stdout + res.stderr
    assert not run_dir.exists()


def test_missing_config_and_bad_nproc(tmp_path):
    for args, needle in ((["--config", str(tmp_path / "nope.yaml")], "no such file"),
                         (["--config", "x.yaml", "--nproc", "0"], "--nproc")):
        res = subprocess.run([sys.executable, "-m", "launch", "local", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and needle in res.stderr, res.stderr


def test_rank_output_is_prefixed_line_by_line_and_bars_redraw(tmp_path):
    import io

    from launch.local import _pump

    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write("
                             "'one\\n\\rbar 1\\rbar 2\\ntail')"], stdout=subprocess.PIPE)
    out = io.BytesIO()
    _pump(3, proc.stdout, out)
    proc.wait()
    assert out.getvalue() == (b"[rank 3] one\n\r[rank 3] bar 1\r[rank 3] bar 2\n"
                                  b"[rank 3] tail\n")
