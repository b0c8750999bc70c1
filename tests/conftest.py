"""Suite-wide options: `--slow` runs the long trials marked `@pytest.mark.slow`."""

import os

import pytest

# Every test process (and the ranks it starts) sees the same deterministic, offline settings.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the long trials marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long trial: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """torch's flex_attention front end refuses a backward on CPU (a device check: the fused
    kernels are GPU-only). Its reference implementation, which the front end runs on CPU, does
    have a backward: lift only that check, so flex gradients can be compared on CPU."""
    import torch.nn.attention.flex_attention as flex

    check = flex._validate_device
    monkeypatch.setattr(flex, "_validate_device",
                        lambda q, k, v: check(q.detach(), k.detach(), v.detach()))


# ---- a real S3 server (Ceph RGW), one per session ----------------------------------------------

@pytest.fixture(scope="session")
def rgw():
    """Ceph RGW on 127.0.0.1 (tests/helpers/ceph.py), started once for the whole session
    (~12 s) and stopped by PID at the end. Missing packages fail naming `make sysdeps`; a
    daemon that does not come up fails with its log tail."""
    from helpers.ceph import StartFailed, Unavailable, start_rgw

    try:
        server = start_rgw()
    except (Unavailable, StartFailed) as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.stop()


class S3Bucket:
    """A fresh bucket on the session's server, with the AWS environment set for this test (and
    the processes it starts): `url(...)` makes s3:// addresses in it."""

    def __init__(self, rgw, name: str, env: dict[str, str]):
        self.rgw, self.name, self.env = rgw, name, env

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *(p.strip("/") for p in parts)])

    @property
    def remote(self):
        from data_tools.remote import shared_remote

        return shared_remote()


def _bucket_name(request) -> str:
    import hashlib

    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    return f"t-{digest}-{os.getpid() % 100000}"


@pytest.fixture
def s3(rgw, request, monkeypatch) -> S3Bucket:
    """A new empty bucket and the AWS_* variables pointing at the session's Ceph RGW."""
    from data_tools.remote import SERVER_COMPAT_ENV, shared_remote

    env = {**rgw.env(), **SERVER_COMPAT_ENV}
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = S3Bucket(rgw, _bucket_name(request), env)
    shared_remote(deadline_s=30).create_bucket(bucket.name)
    return bucket


@pytest.fixture
def s3_proxy(s3, monkeypatch):
    """A TCP proxy (tests/helpers/tcpproxy.py) between the clients and the server: the AWS
    endpoint of this test points at it; it counts GETs and can reset or stall connections."""
    from helpers.tcpproxy import TcpProxy

    proxy = TcpProxy(s3.rgw.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    s3.env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint}
    try:
        yield proxy
    finally:
        proxy.close()
