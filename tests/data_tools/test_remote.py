"""data_tools.remote against a real Ceph RGW (and a TCP proxy for faults)."""

from __future__ import annotations

import hashlib
import os

import pytest

from data_tools.remote import (
    SERVER_COMPAT_ENV,
    Remote,
    RemoteError,
    RemoteUnavailable,
    S3Path,
    configure_env,
    endpoint_from_env,
    is_remote,
)


def test_parse_and_join():
    p = S3Path.parse("s3://bkt/some/prefix/")
    assert (p.bucket, p.key, str(p)) == ("bkt", "some/prefix", "s3://bkt/some/prefix")
    assert str(p.join("train", "00000.arrow")) == "s3://bkt/some/prefix/train/00000.arrow"
    assert S3Path.parse("s3://bkt").fs_path == "bkt"
    assert is_remote("s3://b/x") and not is_remote("/data/x") and not is_remote(None)
    for bad in ("s3://", "s3:///key", "s3://b//k", "http://b/k"):
        with pytest.raises(RemoteError) as e:
            S3Path.parse(bad)
        assert e.value.kind == "url"


def test_configure_env_only_with_an_endpoint_and_keeps_user_values():
    env = {}
    configure_env(env)
    assert env == {}
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REQUEST_CHECKSUM_CALCULATION":
           "WHEN_SUPPORTED"}
    configure_env(env)
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_SUPPORTED"
    assert env["AWS_RESPONSE_CHECKSUM_VALIDATION"] == "WHEN_REQUIRED"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    ep = endpoint_from_env({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://b:2",
                            "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (ep.scheme, ep.host_port, ep.region) == ("https", "b:2", "eu-west-1")
    with pytest.raises(RemoteError, match="AWS_ENDPOINT_URL="):
        endpoint_from_env({"AWS_ENDPOINT_URL": "127.0.0.1:7480"})


def test_round_trip_list_download_and_checksum(s3, tmp_path):
    r = s3.remote
    data = os.urandom(3_000_000)
    sha = hashlib.sha256(data).hexdigest()
    path = S3Path.parse(s3.url("pre/a.bin"))
    r.put_bytes(path, data)
    assert r.size(path) == len(data)
    assert r.size(S3Path.parse(s3.url("pre/none.bin"))) is None
    assert r.list(S3Path.parse(s3.url("pre"))) == {"a.bin": len(data)}
    assert r.download(path, tmp_path / "a", len(data), sha) == sha
    assert (tmp_path / "a").read_bytes() == data
    with pytest.raises(RemoteError) as e:
        r.download(path, tmp_path / "b", len(data), "0" * 64)
    assert e.value.kind == "checksum" and "a.bin" in str(e.value)


def test_errors_name_what_is_wrong(s3, monkeypatch, tmp_path):
    r = Remote(deadline_s=5)
    with pytest.raises(RemoteError) as e:
        r.read_bytes(S3Path.parse(s3.url("missing.json")))
    assert e.value.kind == "key" and "missing.json" in str(e.value)
    with pytest.raises(RemoteError) as e:
        r.read_bytes(S3Path("no-such-bucket-arrowtrain", "x.json"))
    assert e.value.kind == "bucket" and "no such bucket" in str(e.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
    with pytest.raises(RemoteError) as e:
        Remote(deadline_s=5).check_access(S3Path.parse(s3.url()))
    assert e.value.kind == "credentials" and "access denied" in str(e.value)
    assert "wrong-secret-123" not in str(e.value)


def test_unreachable_endpoint_is_an_outage(s3, monkeypatch):
    from pretrain.train.distenv import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RemoteUnavailable) as e:
        Remote(deadline_s=1.5).check_access(S3Path.parse(s3.url()))
    assert e.value.kind == "endpoint" and "unreachable" in str(e.value)


def test_resets_are_retried_and_the_download_resumes(s3, s3_proxy, tmp_path, monkeypatch):
    import data_tools.remote as remote

    monkeypatch.setattr(remote, "STALL_TIMEOUT_S", 2.0)   # a cut connection may also stall
    data = os.urandom(2_500_000)
    path = S3Path.parse(s3.url("r.bin"))
    s3.remote.put_bytes(path, data)
    s3_proxy.clear()
    s3_proxy.reset_connections(1, after_bytes=200_000)   # a reset in the middle of a body
    got = Remote(deadline_s=60).download(path, tmp_path / "r", len(data),
                                         hashlib.sha256(data).hexdigest())
    assert got == hashlib.sha256(data).hexdigest()
    gets = s3_proxy.gets(f"{s3.name}/r.bin")[f"{s3.name}/r.bin"]
    assert gets >= 2, gets                # the cut GETs were retried


def test_outage_longer_than_the_deadline(s3, s3_proxy):
    path = S3Path.parse(s3.url("o.bin"))
    s3.remote.put_bytes(path, b"x" * 10)
    s3_proxy.set_down(True)
    with pytest.raises(RemoteUnavailable, match="failed for 2 s"):
        Remote(deadline_s=2).read_bytes(path)
    s3_proxy.set_down(False)
    assert Remote(deadline_s=10).read_bytes(path) == b"x" * 10


def test_server_compat_env_is_what_the_fixture_uses(s3):
    assert all(s3.env[k] == v for k, v in SERVER_COMPAT_ENV.items())


def test_server_daemons_die_with_the_test_process(rgw, tmp_path):
    """The fixture's daemons are tied to the test process (tests/helpers/ceph.py spawn_tied):
    a process killed with SIGKILL leaves none behind. Shown on a stand-in daemon, started the
    same way by a process that is then killed."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    code = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from helpers.ceph import spawn_tied\n"
            "p = spawn_tied(['sleep', '300'], __import__('pathlib').Path(sys.argv[2]))\n"
            "print(p.pid, flush=True); time.sleep(300)\n")
    tests = str(Path(__file__).resolve().parents[1])
    owner = subprocess.Popen([sys.executable, "-c", code, tests, str(tmp_path / "d.log")],
                             stdout=subprocess.PIPE, text=True)
    daemon = int(owner.stdout.readline())
    assert Path(f"/proc/{daemon}").exists()
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    def running(pid: int) -> bool:          # a zombie (nobody reaped it yet) has ended
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + 30
    while running(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(daemon)
    for pid in rgw.pids:                               # the session's own: children, tied
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"PPid:\t{os.getpid()}" in status
