"""`data copy` and the s3:// forms of `shard --out`, `validate` and `inspect` against a real
Ceph RGW: byte-identical round trips, sha256 checked on the way (a bad file is named and never
written), the manifest written last, an interrupted copy resuming with only what is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.copy import copy_folder
from data_tools.errors import DataToolsError
from data_tools.folder import read_manifest

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_tools", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    import numpy as np

    from pretrain.data.synthetic import random_docs, write_folder

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("copy") / "a"
    write_folder(path, {"train": [random_docs(rng, 700, 10, 2, 400) for _ in range(5)],
                        "val": [random_docs(rng, 300, 10, 2, 400)]}, 512)
    return path


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_round_trip_local_s3_s3_local_is_byte_identical(folder, s3, s3_proxy, tmp_path):
    env = {**os.environ, **s3.env, "PYTHONPATH": str(REPO)}
    s3_proxy.clear()
    res = cli("copy", str(folder), s3.url("one"), "--workers", "3", env=env)
    assert res.returncode == 0, res.stderr
    puts = [r.key for r in s3_proxy.requests if r.method == "PUT" and not r.key.endswith("/")]
    files = [k for k in puts if not k.endswith((".arrowtrain-copy.json", "manifest.json"))]
    assert len(files) == 7                                      # 6 shards + the tokenizer
    assert puts.index(f"{s3.name}/one/manifest.json") > max(map(puts.index, files))
    assert cli("copy", s3.url("one"), s3.url("two"), env=env).returncode == 0
    res = cli("copy", s3.url("two"), str(tmp_path / "back"), env=env)
    assert res.returncode == 0, res.stderr
    assert files_of(tmp_path / "back") == files_of(folder)
    again = cli("copy", str(folder), s3.url("one"), env=env)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_a_bad_file_is_named_and_the_copy_resumes(folder, s3, s3_proxy, tmp_path):
    src = tmp_path / "src"
    import shutil

    shutil.copytree(folder, src)
    bad = src / "train" / "00002.arrow"
    good = bad.read_bytes()
    bad.write_bytes(bytes([good[0] ^ 1]) + good[1:])            # same size, other bytes
    with pytest.raises(DataToolsError, match=r"00002.arrow: sha256 .* differs from the "
                                             r"manifest"):
        copy_folder(str(src), s3.url("r"))
    listed = s3.remote.list(__import__("data_tools.remote", fromlist=["S3Path"]).S3Path.parse(
        s3.url("r")))
    assert "manifest.json" not in listed and "train/00002.arrow" not in listed
    assert "train/00001.arrow" in listed                        # the others are there
    bad.write_bytes(good)
    s3_proxy.clear()
    result = copy_folder(str(src), s3.url("r"))
    assert result["files"] == 1 and result["skipped"] == 6      # only the bad one again
    assert read_manifest(s3.url("r")).fingerprint == read_manifest(folder).fingerprint


def test_shard_to_s3_then_validate_and_inspect(s3, tmp_path):
    env = {**os.environ, **s3.env, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i} of the corpus with some words\n" for i in range(300)))
    assert cli("train-tokenizer", str(corpus), "--vocab-size", "300", "--out",
               str(tmp_path / "tok"), env=env).returncode == 0
    shard = ["shard", str(corpus), "--tokenizer", str(tmp_path / "tok"), "--out",
             s3.url("sharded"), "--workers", "1", "--val-fraction", "0.1"]
    res = cli(*shard, env=env)
    assert res.returncode == 0, res.stderr
    assert not list(tmp_path.glob("arrowtrain-stage-*"))        # the stage is gone
    assert "nothing to do" in cli(*shard, env=env).stderr       # same arguments: done
    res = cli("validate", s3.url("sharded"), env=env)
    assert res.returncode == 0 and "is valid" in res.stderr, res.stderr
    res = cli("inspect", s3.url("sharded"), "--json", env=env)
    report = json.loads(res.stdout)
    assert report["splits"]["train"]["documents"] + report["splits"]["val"]["documents"] == 300
    assert report["splits"]["train"]["stored_bytes"] == \
        report["splits"]["train"]["manifest_bytes"] > 0
    res = cli("validate", s3.url("nothing"), env=env)
    assert res.returncode == 2 and "manifest.json: not found" in res.stderr
