"""A real S3 server for the tests: Ceph RGW on 127.0.0.1 (recipe: shared/notes/s3.md).

One monitor, one memstore OSD (objects in memory, nothing on disk but the monitor's store) and
radosgw, all with `auth none`, on free ports, in one temp folder. `start_rgw()` returns a running
`Rgw` with a user (access key / secret key) that can create buckets; `Rgw.stop()` ends only the
three processes it started, by their PIDs, and removes the folder. The daemons run in the
foreground as children of the test process with a parent-death signal (prctl PR_SET_PDEATHSIG):
if the test process dies — SIGKILL, a CI timeout — the kernel kills them too, so no daemon
outlives the session (only the temp folder under /tmp stays).

The packages (ceph-mon, ceph-osd, radosgw) are installed by `make sysdeps`, never by a test:
`Unavailable` says which binaries are missing and names that target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "monmaptool", "radosgw-admin", "ceph")
ACCESS_KEY, SECRET_KEY = "arrowtrain-test-key", "arrowtrain-test-secret"
START_TIMEOUT_S = 90.0


class Unavailable(RuntimeError):
    """The server cannot be started here (missing packages): tests skip or fail, naming why."""


class StartFailed(RuntimeError):
    """The packages are there but a daemon did not come up: tests fail with its log tail."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b)]


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Rgw:
    dir: Path
    port: int
    mon_ports: tuple[int, int]
    pids: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS variables a client needs to reach this server (as a user would set them)."""
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def admin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["radosgw-admin", "-c", str(self.conf), "-n", "client.rgw.a",
                               *args], capture_output=True, text=True, timeout=timeout)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.dir / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out += [f"{log.name}: {x}" for x in text]
        return "\n".join(out)

    def stop(self) -> None:
        # SIGKILL: the cluster is thrown away with its folder (memstore: nothing on disk to
        # keep consistent), and SIGTERM made the session's last test wait ~5 s for radosgw.
        for pid in reversed(self.pids):
            _signal(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)                     # reaped: no zombie left
        self.pids.clear()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def render_conf(d: Path, fsid: str, mon_ports: tuple[int, int], rgw_port: int) -> str:
    v2, v1 = mon_ports
    return f"""\
[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
ms_client_mode = crc
ms_bind_ipv6 = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_data_avail_crit = 0
mon_data_avail_warn = 0
run_dir = {d}/run
log_file = {d}/log/$name.log
admin_socket = {d}/run/$name.asok
pid_file = {d}/run/$name.pid
[mon]
mon_data = {d}/mon
# the monitor batches map changes for paxos_propose_interval (1 s): radosgw's start makes ~10
# of them one after the other (a pool each, its application, its settings), 11 s of waiting
paxos_propose_interval = 0.01
paxos_min_wait = 0.001
[osd]
osd_data = {d}/osd$id
osd_objectstore = memstore
memstore_device_bytes = 2147483648
[client.rgw.a]
# tcp_nodelay: small responses otherwise wait ~40 ms for the client's delayed ACK
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw_data = {d}/rgw
rgw_thread_pool_size = 64
"""


def _run(d: Path, *cmd: str, timeout: float = 60) -> None:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=d)
    if res.returncode != 0:
        raise StartFailed(f"{' '.join(cmd)} exited {res.returncode}: "
                          f"{(res.stderr or res.stdout).strip()[-800:]}")


PR_SET_PDEATHSIG = 1      # prctl(2): a signal the kernel sends when the parent ends


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it ends, however
    that ends (a test process killed by SIGKILL or a timeout leaves no daemon behind)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(127)
    if os.getppid() == 1:      # the parent is already gone
        os._exit(127)


def spawn_tied(cmd: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in the foreground as our child, killed by the kernel when we end."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads yet


def _daemon(r: Rgw, name: str, *cmd: str) -> None:
    """A Ceph daemon in the foreground (-f), tied to this process (spawn_tied)."""
    proc = spawn_tied([*cmd, "-f"], r.dir / "log" / f"{name}.out", cwd=r.dir)
    r.procs.append(proc)
    r.pids.append(proc.pid)


def _wait_http(r: Rgw, timeout_s: float) -> None:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        if not all(_alive(p) for p in r.pids):
            raise StartFailed("a Ceph daemon exited during start-up")
        try:
            with urllib.request.urlopen(r.endpoint + "/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    raise StartFailed(f"radosgw did not answer on {r.endpoint} in {timeout_s:.0f} s ({last})")


def _start_daemons(r: Rgw, fsid: str) -> None:
    d, conf = r.dir, str(r.conf)
    v2, v1 = r.mon_ports
    _run(d, "monmaptool", "--create", "--addv", "a",
         f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]", "--fsid", fsid, str(d / "monmap"))
    _run(d, "ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"))
    _daemon(r, "mon", "ceph-mon", "-c", conf, "-i", "a")
    _run(d, "ceph", "-c", conf, "--connect-timeout", "30", "osd", "create")
    _run(d, "ceph-osd", "-c", conf, "-i", "0", "--mkfs")
    _daemon(r, "osd", "ceph-osd", "-c", conf, "-i", "0")
    _daemon(r, "rgw", "radosgw", "-c", conf, "-n", "client.rgw.a")


def start_rgw() -> Rgw:
    """A running Ceph RGW with one S3 user (ACCESS_KEY / SECRET_KEY); ~1 s on a 2-core box."""
    if missing := missing_binaries():
        raise Unavailable(f"Ceph RGW is not installed (missing {', '.join(missing)}): run "
                          "`make sysdeps` as root (installs ceph-mon ceph-osd radosgw)")
    d = Path(tempfile.mkdtemp(prefix="arrowtrain-rgw-", dir="/tmp"))
    for sub in ("run", "log", "mon", "osd0", "rgw"):
        (d / sub).mkdir()
    mon_v2, mon_v1, port = _free_ports(3)
    r = Rgw(d, port, (mon_v2, mon_v1))
    fsid = str(uuid.uuid4())
    r.conf.write_text(render_conf(d, fsid, r.mon_ports, port))
    try:
        _start_daemons(r, fsid)
        _wait_http(r, START_TIMEOUT_S)
        res = r.admin("user", "create", "--uid=arrowtrain", "--display-name=arrowtrain",
                      f"--access-key={ACCESS_KEY}", f"--secret={SECRET_KEY}")
        if res.returncode != 0:
            raise StartFailed(f"radosgw-admin user create: {res.stderr.strip()[-500:]}")
    except (OSError, subprocess.SubprocessError, StartFailed) as e:
        tail = r.log_tail()
        r.stop()
        raise StartFailed(f"could not start Ceph RGW in {d}: {e}\n{tail}") from None
    return r


def assert_no_secret(folders: list[Path]) -> None:
    """The fixture user's secret key appears in no file under `folders` (run folders, logs,
    caches), while the environment the runs got did hold it."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET_KEY.encode() not in path.read_bytes(), path
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") == SECRET_KEY
