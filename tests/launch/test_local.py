"""`launch local` without training: exit-code rules and the config check before any start."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import yaml

from launch.common import REPO, combine_exit_codes


@pytest.mark.parametrize("codes,expected", [
    ([0, 0], 0), ([75, 75], 75), ([0, 75], 75), ([75, 2], 2), ([1, 75], 1), ([0, 3, 1], 3),
    ([-9, 0], 137), ([75, -15], 143),
])
def test_combine_exit_codes(codes, expected):
    assert combine_exit_codes(codes) == expected


# Runs the launcher's main in a fresh interpreter and reports which heavy modules it imported.
MAIN_AND_IMPORTS = ("import sys; from launch.__main__ import main\n"
                    "try: rc = main(sys.argv[1:])\nexcept SystemExit as e: rc = e.code\n"
                    "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
                    "{'torch', 'deepspeed'})); sys.exit(rc)")


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MAIN_AND_IMPORTS, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_config_errors_exit_2_before_any_rank_starts(tmp_path):
    cfg = tmp_path / "bad.yaml"
    run_dir = tmp_path / "run"
    cfg.write_text(f"run_dir: {run_dir}\nbogus_key: 1\ntrain: {{max_steps: -1}}\n"
                   f"data: {{path: {tmp_path / 'nodata'}, seq_len: 8}}\n")
    res = launch("local", "--config", str(cfg), "--nproc", "2", "optim.lr=fast",
                 "train.max_steps", "optim.lrr=1")
    assert res.returncode == 2, res.stderr
    assert "HEAVY []" in res.stdout  # no torch, no deepspeed: the launcher answers fast
    assert res.stderr.count("error:") == 1  # one message...
    in_file, from_cli = res.stderr.split("from the command line:")
    for key in ("bogus_key", "train.max_steps", "model: required key is missing",  # ...all
                f"data.path {tmp_path / 'nodata'}: no such folder"):
        assert key in in_file
    assert f"in {cfg}:" in in_file
    for text in ("optim.lr: Input should be a valid number", "`optim.lr=fast`",
                 "override 'train.max_steps' is not of the form dotted.key=value",
                 "did you mean `optim.lr`?"):
        assert text in from_cli
    assert "[rank" not in res.stdout + res.stderr
    assert not run_dir.exists()


def test_help_imports_neither_torch_nor_deepspeed():
    res = launch("local", "--help")
    assert res.returncode == 0 and "--dry-run" in res.stdout and "--print-config" in res.stdout
    assert "HEAVY []" in res.stdout


def test_print_config_and_dry_run_start_nothing(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = ["local", "--config", str(REPO / "configs" / "gpt-tiny.yaml"), "--nproc", "2",
            "--omp-threads", "1", f"run_dir={run_dir}", f"data.path={tiny_data}",
            "train.max_steps=7", "model.vocab_size=null"]
    res = launch(*args, "--print-config")
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    printed = yaml.safe_load(res.stdout.split("HEAVY")[0])
    assert printed["train"]["max_steps"] == 7 and printed["run_dir"] == str(run_dir)
    assert printed["model"]["vocab_size"] == 512  # from the data: the tokenizer's, rounded up to 64
    assert "[rank" not in res.stdout + res.stderr

    res = launch(*args, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    lines = [shlex.split(x) for x in res.stdout.splitlines() if x.startswith("env ")]
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        env = dict(w.split("=", 1) for w in line[1:] if "=" in w and not w.startswith("-")
                   and "." not in w.split("=")[0])
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert env["OMP_NUM_THREADS"] == "1" and env["MASTER_ADDR"] == "127.0.0.1"
        assert str(REPO) in env["PYTHONPATH"].split(os.pathsep)
        i = line.index("-m")
        assert line[i:i + 4] == ["-m", "pretrain.train", "--config", args[2]]
        assert line[i + 4:] == args[7:]
    assert not run_dir.exists()
    # the printed line is a working shell command: run rank 0's with --print-config
    check = subprocess.run(["bash", "-c", shlex.join(lines[0]) + " --print-config"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert yaml.safe_load(check.stdout) == printed


@pytest.mark.parametrize("command", [["slurm", "--nodes", "2"],
                                     ["hostfile", "--hostfile", "HOSTS"]])
def test_slurm_and_hostfile_check_and_print_config_before_anything_starts(
        command, tiny_data, tmp_path, capsys):
    from launch.__main__ import main

    (tmp_path / "hosts").write_text("a slots=1\nb slots=1\n")
    command = [str(tmp_path / "hosts") if c == "HOSTS" else c for c in command]
    base = [*command, "--config", str(REPO / "configs" / "gpt-tiny.yaml"),
            f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}"]
    with pytest.raises(SystemExit) as exit_:
        main([*base, "train.global_batch_size=7", "optim.betta1=0.8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "× ranks (2 × 2)" in err and "did you mean `optim.beta1`?" in err
    assert main([*base, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["path"] == str(tiny_data)
    assert not (tmp_path / "run").exists()


def test_hostfile_dry_run_prints_deepspeeds_command(tiny_data, tmp_path, capsys):
    from launch.__main__ import main

    (tmp_path / "hosts").write_text("a slots=2\nb slots=2\n")
    assert main(["hostfile", "--hostfile", str(tmp_path / "hosts"), "--no-ssh", "--node-rank",
                 "1", "--master-addr", "a", "--omp-threads", "3", "--dry-run", "--config",
                 str(REPO / "configs" / "gpt-tiny.yaml"), f"run_dir={tmp_path / 'run'}",
                 f"data.path={tiny_data}"]) == 0
    out = capsys.readouterr().out
    line = shlex.split(out.splitlines()[-1])
    assert line[:2] == ["env", "OMP_NUM_THREADS=3"] and "deepspeed.launcher.runner" in line
    assert line[line.index("pretrain.train") + 1:][-1] == f"data.path={tiny_data}"
    assert "4 rank(s) on 2 node(s)" in out
    assert not (tmp_path / "run").exists()  # no env file written


def test_missing_config_and_bad_nproc(tmp_path, cli):
    from launch.__main__ import main

    for args, needle in ((["--config", str(tmp_path / "nope.yaml")], "no such file"),
                         (["--config", "x.yaml", "--nproc", "0"], "--nproc")):
        res = cli(main, "local", *args)
        assert res.code == 2 and needle in res.err, res.err


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
