"""Suite-wide options and the shared session fixtures: one tiny shard folder and one pair folder,
and the trained runs several test files read — built once per session, on first use.

`--slow` runs the long trials marked `@pytest.mark.slow`.

`make test` runs the suite on 3 pytest-xdist workers where there are 2 cores or more
(`TEST_WORKERS=N` to choose, 0 for one process; `--dist loadgroup`): the tests of one file stay
on one worker,
and so do all tests of one real service (SLURM, sshd, Ceph RGW), which thus starts once; the
long files are handed out first. The shared folders and runs below are built once for all
workers (`built_once`).

Shared runs are read-only: a test that resumes, damages or otherwise changes one works on a copy
(`copy_run(run, tmp_path / "run")`). What each is made of: helpers/runs.py."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.disks import tmpfs
from helpers.dist import REPO, run_ranks
from helpers.runs import (
    copy_run,
    data_tools,
    read_metrics,
    small_run_args,
    train_args,
    train_losses,
    write_corpus,
)

# Every test process (and the ranks it starts) sees the same deterministic, offline settings.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pin_inductor_cache_dir() -> None:
    """torch's compiler sets TORCHINDUCTOR_CACHE_DIR in os.environ the first time it compiles in
    this process (to its default folder). That variable is read when the ranks import torch, so
    the fork server (helpers/forkserver.py) refuses ranks whose environment has it while its own
    did not: every 2-rank run after the suite's first in-process compile started a fresh
    interpreter (+7 s each). Set it to that same default now, before anything starts."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cache_dir()


_pin_inductor_cache_dir()
# Each xdist worker takes its rendezvous and server ports from its own range below the kernel's
# ephemeral ports (32768+): a port picked free cannot be taken meanwhile by the other worker's
# pick or by any outgoing connection (gloo opens many) before its server binds it.
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    _n = int(os.environ["PYTEST_XDIST_WORKER"][2:]) % 6
    os.environ.setdefault("ARROWTRAIN_PORT_RANGE", f"{20000 + 2000 * _n}-{21999 + 2000 * _n}")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the long trials marked slow")


def pytest_configure(config):
    # The toolkit's logging, set up once for the whole session (as the first command run in
    # this process would), so that commands called in-process neither replace pytest's log
    # capture nor bind to one test's captured stderr. Their records reach `caplog`.
    from pretrain.logs import setup_logging

    setup_logging()
    config.pluginmanager.register(GroupCheck(), "arrowtrain-group-check")
    # the groups below are marks; declared here too, so a run without xdist (-p no:xdist) is no
    # "unknown marker" error
    config.addinivalue_line("markers", "xdist_group(name): tests that share one xdist worker")


def pytest_collection_finish(session):
    """What collection imported (torch, DeepSpeed, pyarrow, every test module: ~500k objects)
    lives as long as this process: out of the cyclic GC's reach, as the trainer does after its
    imports (pretrain/train/loop.py). Each full collection in a worker otherwise walked ~700k
    objects (~0.2 s; ~10 per worker per run, and 5 more at its end)."""
    gc.freeze()


SERVICE_FIXTURES = ("slurm", "sshd", "rgw")


def xdist_groups(items) -> dict[str, str]:
    """nodeid -> group for pytest-xdist's `--dist loadgroup`: the tests of one file share a
    group (its module fixtures are built once), and so do all the tests of one real service (it
    starts once); both rules together, so a group is a set of files joined by their services."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for item in items:
        file = item.nodeid.split("::")[0]
        for service in SERVICE_FIXTURES:
            if service in getattr(item, "fixturenames", ()):
                parent[find(file)] = find(f"service:{service}")
    return {item.nodeid: find(item.nodeid.split("::")[0]) for item in items}


# Folders of long tests (real rank processes), handed out before the many short unit tests so
# the workers finish together instead of one waiting on a long file at the end.
LONG_FIRST = ("service:", "tests/pretrain/train/", "tests/launch/", "tests/arrowtrain/demos/",
              "tests/benchmarks/")


def _long_first(group: str) -> int:
    return next((i for i, p in enumerate(LONG_FIRST) if group.startswith(p)), len(LONG_FIRST))


class GroupCheck:
    """`--dist loadgroup` must group: in an xdist worker, pytest-xdist tags every test's id with
    its group ("...::test@service:rgw") and the controller hands out tests by that tag. Without
    it the groups are silently ignored (pytest 9.2 with pytest-xdist 3.8, pytest-xdist#1386:
    each worker then started its own SLURM, sshd and RGW and built each module's fixtures
    again). The run stops instead, naming the cause."""

    KNOWN_BAD = ("9.2", "3.8")  # pytest >= 9.2 with pytest-xdist <= 3.8

    def pytest_configure(self, config):
        if config.getoption("dist", "no") != "loadgroup":
            return
        import xdist

        bad_pytest, bad_xdist = self.KNOWN_BAD
        if _version(pytest.__version__) >= _version(bad_pytest) and \
                _version(xdist.__version__) <= _version(bad_xdist):
            raise pytest.UsageError(self.message(xdist.__version__))

    @pytest.hookimpl(trylast=True)  # in a worker, after xdist's own hook tagged the ids
    def pytest_collection_modifyitems(self, config, items):
        if not getattr(config.option, "loadgroup", False):
            return
        if any("@" not in i.nodeid for i in items):
            import xdist

            os.write(2, (self.message(xdist.__version__) + "\n").encode())
            pytest.exit(self.message(xdist.__version__), returncode=pytest.ExitCode.USAGE_ERROR)

    @staticmethod
    def message(xdist_version: str) -> str:
        return (f"--dist loadgroup does not group with pytest {pytest.__version__} and "
                f"pytest-xdist {xdist_version} (pytest-xdist#1386): run `make venv` "
                "(pyproject.toml pins a pytest that works) or TEST_WORKERS=0")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2] if x.isdigit())


@pytest.hookimpl(tryfirst=True)  # our marks first: xdist's hook reads them (it is a plain one)
def pytest_collection_modifyitems(config, items):
    groups = xdist_groups(items)
    items.sort(key=lambda item: _long_first(groups[item.nodeid]))  # stable: files keep order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    if os.environ.get("ARROWTRAIN_SHOW_GROUPS"):
        for nodeid, group in groups.items():
            print(f"group {group} {nodeid}")
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


# ---------------------------------------------------------------------------------------------
# Commands called in-process


@dataclass
class CliResult:
    code: int | None
    out: str   # what the command printed on stdout
    err: str   # what it printed on stderr, then the records it logged


@pytest.fixture
def cli(capsys, caplog):
    """cli(main, *argv) -> CliResult: a command's `main(argv)` in this process. For the tests
    where the process itself is not what is tested; each command keeps at least one test that
    runs it as a real subprocess (its exit code, stdout alone)."""
    def run(main, *argv) -> CliResult:
        capsys.readouterr()
        start = len(caplog.text)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return CliResult(code, out, err + caplog.text[start:])

    return run


# ---------------------------------------------------------------------------------------------
# Built once for all xdist workers


def built_once(factory: pytest.TempPathFactory, name: str, build) -> Path:
    """FOLDER where `build(FOLDER)` ran once for this session, whichever worker asked first: the
    others wait on a lock, then reuse it. A build that fails leaves no mark, so the next caller
    tries again (and fails with its own traceback)."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    shared = base / "built_once"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _key_name(prefix: str, key: tuple) -> str:
    return f"{prefix}-{hashlib.sha256(repr(key).encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# Data folders


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """DATADIR of ~1500 documents of a tiny grammar, vocab 512 with 100 T5 sentinels, made with
    the data_tools command line."""
    def build(root: Path) -> None:
        corpus = write_corpus(root / "corpus.jsonl")
        data_tools("train-tokenizer", corpus, "--vocab-size", "512", "--sentinels", "100",
                   "--out", root / "tok")
        data_tools("shard", corpus, "--tokenizer", root / "tok" / "tokenizer.json",
                   "--out", root / "data", "--val-fraction", "0.05", "--workers", "1")

    return built_once(tmp_path_factory, "tiny_data", build) / "data"


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory) -> Path:
    """A pair folder of the synthetic translation task (arrowtrain/demos/translate_task.py):
    1200 pairs, tokenizer learnt from both sides, made with the data_tools command line."""
    from arrowtrain.demos.translate_task import make_task

    def build(root: Path) -> None:
        paths = make_task(root / "task", train=1200, test=50)
        fields = ["--source-field", "src", "--target-field", "tgt"]
        data_tools("train-tokenizer", paths["pairs"], *fields, "--vocab-size", "512",
                   "--out", root / "tok")
        data_tools("shard", paths["pairs"], *fields, "--tokenizer",
                   root / "tok" / "tokenizer.json", "--out", root / "data",
                   "--val-fraction", "0.1", "--workers", "1")

    return built_once(tmp_path_factory, "pair_data", build) / "data"


# ---------------------------------------------------------------------------------------------
# Trained runs (SMALL_RUN of helpers/runs.py: gpt-tiny, 8 steps, 2 gloo ranks)


@pytest.fixture(scope="session")
def straight_run(tiny_data, tmp_path_factory):
    """straight_run(stage, *overrides) -> RUNDIR of the uninterrupted SMALL_RUN at that ZeRO
    stage (plus overrides) on 2 ranks (run once per session for each distinct set of arguments,
    shared by the tests that need a reference or a finished run)."""
    cache: dict[tuple, Path] = {}

    def get(stage: int, *overrides: str) -> Path:
        key = (stage, overrides)
        if key not in cache:
            def build(root: Path) -> None:
                run_ranks(small_run_args(root / "run", tiny_data, stage, *overrides),
                          root / "logs")

            name = _key_name(f"straight_zero{stage}", key)
            cache[key] = built_once(tmp_path_factory, name, build) / "run"
        return cache[key]

    return get


@pytest.fixture(scope="session")
def stopped_run(tiny_data, tmp_path_factory):
    """stopped_run(stage, at_step, *overrides, world_size=2) -> RUNDIR of SMALL_RUN (plus
    overrides) stopped by `train.stop_at_step` (exit 75, a checkpoint at that step): run once
    per session for each distinct set of arguments."""
    cache: dict[tuple, Path] = {}

    def get(stage: int, at_step: int, *overrides: str, world_size: int = 2) -> Path:
        key = (stage, at_step, overrides, world_size)
        if key not in cache:
            def build(root: Path) -> None:
                run_ranks(small_run_args(root / "run", tiny_data, stage, *overrides,
                                         f"train.stop_at_step={at_step}"),
                          root / "logs", world_size=world_size, expect=75)

            name = _key_name(f"stopped_zero{stage}_at{at_step}", key)
            cache[key] = built_once(tmp_path_factory, name, build) / "run"
        return cache[key]

    return get


KILLED_LOCK = ("import os, sys; from pretrain.train.runlock import RunLock; "
               "RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)")


def leave_killed_lock(run: Path) -> None:
    """run.lock of a holder killed -9 on this host (stale at once: its process is gone)."""
    killed = subprocess.run([sys.executable, "-c", KILLED_LOCK, str(run)], cwd=REPO, timeout=60)
    assert killed.returncode == -9 and (run / "run.lock").is_file()


@pytest.fixture(scope="session")
def restarted_run(stopped_run, tiny_data, tmp_path_factory):
    """RUNDIR of SMALL_RUN at ZeRO-1 stopped at step 4 (stopped_run(1, 4)), left with the lock
    of a process killed -9, then resumed to step 8 by `launch local --nproc 2` (which takes
    the stale lock over). Its launcher output is in RUNDIR/../launch.log."""
    stopped = stopped_run(1, 4)

    def build(root: Path) -> None:
        run = copy_run(stopped, root / "run")
        leave_killed_lock(run)
        args = small_run_args(run, tiny_data, 1)
        res = subprocess.run([sys.executable, "-m", "launch", "local", "--config", args[3],
                              "--nproc", "2", "--omp-threads", "1", *args[4:]],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        (root / "launch.log").write_text(res.stdout + res.stderr)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    return built_once(tmp_path_factory, "restarted", build) / "run"


@pytest.fixture(scope="session")
def runs():
    """The helpers of helpers/runs.py, for test modules that take them as a fixture."""
    return types.SimpleNamespace(train_args=train_args, read_metrics=read_metrics,
                                 train_losses=train_losses, small_run_args=small_run_args,
                                 copy_run=copy_run, leave_killed_lock=leave_killed_lock)


@pytest.fixture
def small_disk(tmp_path):
    """A real 3.5 MB filesystem (tmpfs): room for one gpt-tiny ZeRO-1 checkpoint, not two."""
    with tmpfs(tmp_path / "disk", "3500k") as mnt:
        yield mnt


# ---- a real S3 server (Ceph RGW), one per session ----------------------------------------------

@pytest.fixture(scope="session")
def rgw():
    """Ceph RGW on 127.0.0.1 (tests/helpers/ceph.py), started once for the whole session
    (~1 s) and stopped by PID at the end. Missing packages fail naming `make sysdeps`; a
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
