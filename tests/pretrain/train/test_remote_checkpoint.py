"""checkpoint.remote (issue 21 item 3) with real DeepSpeed on 2 gloo ranks and the session's real
Ceph RGW: every committed checkpoint is uploaded (each object's sha256 is meta.json's), keep_last
applies remotely, a stop waits for its upload; a run whose local checkpoints are gone resumes
from the remote copy bit for bit, skipping a partial copy (no meta.json) and a damaged one (a
file that does not match); an outage during the uploads is retried while training goes on and
the local copy stays until the remote one is complete; `launch status` shows both sides, and
says so when the store does not answer. No secret lands in the run folder or the logs."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.ceph import assert_no_secret
from helpers.dist import REPO, run_ranks, start_ranks

from data_tools.remote import S3Path
from pretrain.train import checkpoint_meta as cm


def _remote_tags(s3, url: str) -> dict[str, set[str]]:
    from pretrain.train.remote_ckpt import remote_tags

    return remote_tags(s3.remote, S3Path.parse(url))


def _remote_latest(s3, url: str) -> str | None:
    from pretrain.train.remote_ckpt import read_remote_latest

    return read_remote_latest(s3.remote, S3Path.parse(url))


def _assert_remote_matches_meta(s3, url: str, tag: str) -> None:
    """Every file of the remote meta.json is there with that sha256 (and meta.json is the local
    one's bytes when the local copy is there)."""
    root = S3Path.parse(url).join(tag)
    meta = cm.CheckpointMeta.model_validate_json(s3.remote.read_bytes(root.join(cm.META)))
    assert meta.files and meta.step == cm.tag_step(tag)
    for rel, rec in meta.files.items():
        data = s3.remote.read_bytes(root.join(rel))
        assert (len(data), hashlib.sha256(data).hexdigest()) == (rec.bytes, rec.sha256), rel


def _copy_remote(s3, url: str, src: str, dst: str, meta: bool, damage: str | None = None):
    root = S3Path.parse(url)
    for name in _remote_tags(s3, url)[src]:
        if name == cm.META and not meta:
            continue
        data = s3.remote.read_bytes(root.join(src, name))
        if name == damage:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        s3.remote.put_bytes(root.join(dst, name), data)


def _status(run: Path, env: dict) -> str:
    res = subprocess.run([sys.executable, "-m", "launch", "status", str(run)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_uploads_then_resume_from_the_remote_copy_is_bitwise(s3, straight_run, runs,
                                                             tiny_data, tmp_path):
    url = s3.url("ckpt", "run1")
    run, env = tmp_path / "run", {**s3.env, "PYTHONPATH": str(REPO)}
    args = runs.small_run_args(run, tiny_data, 1, f"checkpoint.remote={url}",
                               "checkpoint.keep_last=1", "checkpoint.remote_timeout=60")
    first = run_ranks([*args, "train.stop_at_step=5"], tmp_path / "logs1", env=env, expect=75)
    # the stop waited for its upload; keep_last=1 removed step 3 there (and here)
    assert _remote_latest(s3, url) == "step_00000005", first.logs()
    assert sorted(_remote_tags(s3, url)) == ["step_00000005"]
    _assert_remote_matches_meta(s3, url, "step_00000005")
    local = run / "checkpoints" / "step_00000005"
    assert s3.remote.read_bytes(S3Path.parse(url).join("step_00000005", cm.META)) == \
        (local / cm.META).read_bytes()
    assert "checkpoint step_00000003 uploaded to" in first.logs(10**6)

    # a newer partial copy (no meta.json) and a newer damaged one (a rank-1 file altered)
    _copy_remote(s3, url, "step_00000005", "step_00000007", meta=False)
    _copy_remote(s3, url, "step_00000005", "step_00000006", meta=True,
                 damage="zero_pp_rank_1_mp_rank_00_optim_states.pt")
    shutil.rmtree(run / "checkpoints")                         # a node without the local copy
    second = run_ranks(args, tmp_path / "logs2", env=env)
    logs = second.logs(10**6)
    assert "step_00000007 has no meta.json (an upload that did not finish): skipped" in logs
    assert re.search(rf"remote checkpoint {url}/step_00000006 is incomplete or damaged: "
                     r"\S+/zero_pp_rank_1_mp_rank_00_optim_states.pt: sha256 .* differs", logs)
    assert f"resumed from {run / 'checkpoints' / 'step_00000005'} at step 5" in logs
    assert runs.train_losses(run) == runs.train_losses(straight_run(1))

    assert _remote_latest(s3, url) == "step_00000008"
    assert sorted(_remote_tags(s3, url)) == ["step_00000008"]  # stale partial + old ones gone
    _assert_remote_matches_meta(s3, url, "step_00000008")
    out = _status(run, {**os.environ, **env})
    assert "last complete checkpoint: step_00000008" in out, out
    assert f"remote checkpoint: {url}: latest step_00000008 (step 8)" in out, out
    assert_no_secret([run, tmp_path / "logs1", tmp_path / "logs2"])


def _wait_for_step(run: Path, step: int, ranks, runs, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = runs.read_metrics(run) if (run / "metrics.jsonl").is_file() else []
        if any(r.get("step", 0) >= step and "loss" in r for r in rows):
            return
        assert all(p.poll() is None for p in ranks.procs), ranks.logs()
        assert time.monotonic() < deadline, ranks.logs()
        time.sleep(0.02)


def test_outage_during_upload_is_retried_and_training_goes_on(s3, s3_proxy, straight_run,
                                                              runs, tiny_data, tmp_path, cli):
    """ZeRO-3 with checkpoint.async: the store goes away after step 1 (before the first save)
    and comes back once training has passed two more saves: the uploads retry, training never
    stops, the local step-3 copy stays (keep_last=1) while its upload cannot finish; then the
    remote copy resumes the run bit for bit."""
    from launch.__main__ import main as launch_main

    url = s3.url("ckpt", "run3")
    run, env = tmp_path / "run", {**s3.env, "PYTHONPATH": str(REPO)}
    args = runs.small_run_args(run, tiny_data, 3, f"checkpoint.remote={url}",
                               "checkpoint.async=true", "checkpoint.keep_last=1",
                               "checkpoint.remote_timeout=60")
    ranks = start_ranks([*args, "train.stop_at_step=7"], tmp_path / "logs1", env=env)
    try:
        _wait_for_step(run, 1, ranks, runs)
        s3_proxy.set_down(True)
        _wait_for_step(run, 7, ranks, runs)     # two saves (3, 6) while the store is away
        assert (run / "checkpoints" / "step_00000003").is_dir()   # kept: not uploaded yet
        assert _remote_latest_raw(s3, url) is None
        status = cli(launch_main, "status", run, "--remote-timeout", "0.5")  # no crash, says so
        assert status.code == 0 and f"remote checkpoint: {url}: latest unknown, the store did " \
            "not answer within 0.5 s" in status.out, status
        s3_proxy.set_down(False)
        codes = ranks.wait(240)
    finally:
        s3_proxy.set_down(False)
        ranks.kill()
    logs = ranks.logs(10**6)
    assert codes == [75, 75], logs
    assert "object storage failing" in logs and "retrying" in logs
    assert _remote_latest(s3, url) == "step_00000007"
    assert sorted(_remote_tags(s3, url)) == ["step_00000007"]
    _assert_remote_matches_meta(s3, url, "step_00000007")
    assert cm.list_tags(run / "checkpoints") == ["step_00000007"]  # pruned once uploaded

    shutil.rmtree(run / "checkpoints")
    second = run_ranks(args, tmp_path / "logs2", env=env)
    assert f"resumed from {run / 'checkpoints' / 'step_00000007'} at step 7" in \
        second.logs(10**6)
    assert runs.train_losses(run) == runs.train_losses(straight_run(3))


def _remote_latest_raw(s3, url: str) -> str | None:
    """The remote `latest`, read past the proxy (straight to the server)."""
    from data_tools.remote import shared_remote
    from pretrain.train.remote_ckpt import read_remote_latest

    saved = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = s3.rgw.endpoint
    try:
        return read_remote_latest(shared_remote(deadline_s=30), S3Path.parse(url))
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved


def test_config_refuses_a_bad_remote_address():
    from pydantic import ValidationError

    from pretrain.train.config import CheckpointConfig

    assert CheckpointConfig(remote="s3://b/p/").remote == "s3://b/p"
    for bad in ("/local/path", "s3://", "s3://b//p", "s3://b/p\n"):
        with pytest.raises(ValidationError):
            CheckpointConfig(remote=bad)
    with pytest.raises(ValidationError):
        CheckpointConfig(remote_timeout=0)
