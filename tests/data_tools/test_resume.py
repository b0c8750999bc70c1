"""kill -9 of a real `shard` subprocess at several points, then the same command again: the
final folder is byte-identical to an uninterrupted run (manifest apart from `timing`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools.folder import read_manifest
from tests.data_tools.dt_util import REPO, cli, read_tree, stdlib_texts, write_jsonl


def start(args):
    return subprocess.Popen([sys.executable, "-m", "data_tools", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_when(proc, path, timeout_s=60.0):
    """SIGKILL the whole process group as soon as `path` exists (polled every 5 ms)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"finished before {path.name} appeared: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear in {timeout_s} s")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer):
    """(shard arguments, an uninterrupted run's folder)."""
    d = tmp_path_factory.mktemp("resume")
    corpus = write_jsonl(d / "docs.jsonl", stdlib_texts(800_000, piece_chars=4000))
    args = ["shard", corpus, "--tokenizer", tokenizer, "--shard-size", "16KB",
            "--val-fraction", "0.05"]
    assert cli(*args, "--out", d / "ref", "--workers", "1") == 0
    return args, d / "ref"


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_then_rerun_gives_identical_output(tmp_path, reference, workers):
    args, ref = reference
    n_train = len(read_manifest(ref).splits["train"].shards)
    assert n_train > 30
    out = tmp_path / "out"
    run = [*args, "--out", out, "--workers", workers]
    points = [out / ".resume", out / "train" / "00002.arrow", out / "train" / "00012.arrow",
              out / "train" / f"{n_train * 2 // 3:05d}.arrow"]
    for point in points:
        kill_when(start(run), point)
        assert not (out / "manifest.json").exists()
    r = subprocess.run([sys.executable, "-m", "data_tools", *map(str, run)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert read_tree(out) == read_tree(ref)
    assert read_manifest(out).timing["resumed"] is True


def test_interrupted_folder_with_other_arguments_is_refused(tmp_path, tokenizer, capsys,
                                                           monkeypatch):
    """--strict stops at a late bad record after some shards: an interrupted folder remains."""
    import data_tools.shard
    monkeypatch.setattr(data_tools.shard, "BATCH_DOCS", 16)  # write before reading the end
    lines = [json.dumps({"text": t}) for t in stdlib_texts(200_000)] + ["not json"]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    args = ["shard", tmp_path / "c.jsonl", "--tokenizer", tokenizer, "--out", tmp_path / "o",
            "--shard-size", "16KB", "--workers", "1", "--strict"]
    assert cli(*args) == 2
    assert (tmp_path / "o" / ".resume" / "state.json").is_file()
    assert "c.jsonl:" in capsys.readouterr().err
    assert cli(*args, "--val-fraction", "0.5") == 2
    err = capsys.readouterr().err
    assert "interrupted run with other arguments" in err and "--val-fraction" in err
    assert cli(*args[:-1], "--overwrite") == 0  # without --strict: the bad line is skipped
    assert read_manifest(tmp_path / "o").skipped == {"invalid_json": 1}


def test_kill_9_with_a_val_token_budget(tmp_path, reference, tokenizer):
    """The val candidates held in memory are part of each checkpoint: killed, resumed, the
    folder equals an uninterrupted run's (--workers 2 against --workers 1)."""
    args, _ = reference
    args = [a for a in args if a not in ("--val-fraction", "0.05")] + ["--val-tokens", 30_000]
    assert cli(*args, "--out", tmp_path / "ref", "--workers", "1") == 0
    ref = read_manifest(tmp_path / "ref")
    assert ref.splits["val"].tokens >= 30_000 and len(ref.splits["val"].shards) >= 2
    out = tmp_path / "out"
    run = [*args, "--out", out, "--workers", 2]
    kill_when(start(run), out / "train" / "00010.arrow")
    held = [p for p in (out / ".resume").iterdir() if p.name.startswith("pending-held")]
    assert held, "the checkpoint holds the val candidates"
    r = subprocess.run([sys.executable, "-m", "data_tools", *map(str, run)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    assert read_tree(out) == read_tree(tmp_path / "ref")
