"""Fixtures for the launch tests.

`slurm`: a real two-node SLURM cluster on this machine (facts: notes/slurm.md).
`sshd`: a private sshd + pdsh for `launch hostfile` over ssh (tests/helpers/sshd.py).

Needs munge/slurmctld/slurmd/slurm-client (`make sysdeps` installs them; a test never runs apt:
a missing one fails the fixture naming that target), writes slurm.conf into a temp folder, starts munged (unless one runs), slurmctld and two slurmd (n1, n2 on 127.0.0.1), waits
until both nodes are idle, and on stop ends only the processes it started, by PID, and removes
the /etc/hosts line it added.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.servers import Missing, StartFailed, Unavailable, check_packages

from pretrain.train.distenv import free_port

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged"]
HOSTS_LINE = "127.0.0.1 n1 n2  # arrowtrain launch tests"
MUNGE_PID = Path("/run/munge/munged.pid")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_ports() -> tuple[int, tuple[int, int]]:
    """A controller port and a contiguous pair for the two slurmd, all free and distinct."""
    for _ in range(100):
        base = free_port()
        if base + 1 > 65535 or not _bindable(base + 1):
            continue
        ctld = free_port()
        if ctld not in (base, base + 1):
            return ctld, (base, base + 1)
    raise Unavailable("found no free ports for slurmctld/slurmd on 127.0.0.1")


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if not (shutil.which(b) or Path("/usr/sbin", b).exists())]


def _node_topology() -> tuple[str, int]:
    """`slurmd -C` topology words (minus NodeName/RealMemory) and the detected memory in MB."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    words = out.splitlines()[0].split()
    memory = int(next(w for w in words if w.startswith("RealMemory=")).split("=")[1])
    keep = [w for w in words if not w.startswith(("NodeName=", "RealMemory="))]
    return " ".join(keep), memory


def render_conf(d: Path, ctld_port: int, node_ports: tuple[int, int],
                first_job_id: int = 1) -> str:
    host = socket.gethostname().split(".")[0]
    topology, memory = _node_topology()
    return f"""\
ClusterName=arrowtest
FirstJobId={first_job_id}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MailProg=/bin/true
ReturnToService=2
MpiDefault=none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
NodeName=n[1-2] NodeHostname={host} NodeAddr=127.0.0.1 Port={node_ports[0]}-{node_ports[1]} \
{topology} RealMemory={min(memory, 4096)}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.1)
    raise Unavailable(f"{path} did not appear")


@dataclass
class SlurmCluster:
    dir: Path
    conf: Path
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)
    added_hosts_line: bool = False

    @property
    def jobcomp(self) -> Path:
        return self.dir / "jobcomp.txt"

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                              check=check, timeout=60)

    def node_states(self) -> list[str]:
        res = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return res.stdout.split() if res.returncode == 0 else []

    def wait_idle(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.node_states()
            if len(states) == 2 and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise Unavailable(f"nodes not idle after {timeout_s}s: {self.node_states()}\n"
                          f"{self.log_tail()}")

    def wait_done(self, job_id: str, timeout_s: float = 120) -> str:
        """Wait until slurmctld no longer lists the job; its final job-completion state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
            if not out:
                rec = self.run("sacct", "-c", "-n", "-P", "-j", job_id, "-o", "State",
                               check=False).stdout.split()
                if rec and rec[-1] not in ("REQUEUED", "PENDING", "RUNNING"):
                    return rec[-1]
            time.sleep(0.25)
        raise AssertionError(f"job {job_id} not done after {timeout_s}s\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for log in sorted(self.dir.glob("*.log")):
            out += [f"{log.name}: {x}" for x in log.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)

    def stop(self) -> None:
        if self.pids:
            subprocess.run(["scancel", "--full", "--quiet", "--partition", "debug"],
                           env=self.env, capture_output=True, timeout=30, check=False)
        for pid in reversed(self.pids):
            if _pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid in reversed(self.pids):
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.added_hosts_line:
            _remove_hosts_line()
            self.added_hosts_line = False


def _ensure_munged(cluster: SlurmCluster) -> None:
    if MUNGE_PID.exists() and MUNGE_PID.read_text().strip() and \
            _pid_alive(int(MUNGE_PID.read_text().strip())):
        return  # someone else's munged: use it, never stop it
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    MUNGE_PID.unlink(missing_ok=True)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True,
                   capture_output=True, timeout=30)
    cluster.pids.append(_read_pid(MUNGE_PID))


def _add_hosts_line() -> bool:
    try:
        socket.gethostbyname("n1"), socket.gethostbyname("n2")
        return False
    except OSError:
        pass
    with open("/etc/hosts", "a") as f:
        f.write(HOSTS_LINE + "\n")
    return True


def _remove_hosts_line() -> None:
    text = Path("/etc/hosts").read_text()
    kept = [line for line in text.splitlines() if line != HOSTS_LINE]
    Path("/etc/hosts").write_text("\n".join(kept) + "\n")


def start_cluster() -> SlurmCluster:
    check_packages("SLURM", "munged, slurmd", _missing_binaries(), PACKAGES)
    d = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    (d / "state").mkdir()
    for n in ("n1", "n2"):
        (d / "spool" / n).mkdir(parents=True)
    ctld_port, node_ports = _cluster_ports()
    conf = d / "slurm.conf"
    # The job script derives MASTER_PORT from the job id: a random first id keeps two test
    # clusters on one machine (parallel sessions) from handing their ranks the same port.
    conf.write_text(render_conf(d, ctld_port, node_ports, random.randrange(1000, 19000)))
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = SlurmCluster(d, conf, env)
    try:
        cluster.added_hosts_line = _add_hosts_line()
        _ensure_munged(cluster)
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30)
        cluster.pids.append(_read_pid(d / "slurmctld.pid"))
        for n in ("n1", "n2"):
            subprocess.run(["slurmd", "-f", str(conf), "-N", n], env=env, check=True, timeout=30)
            cluster.pids.append(_read_pid(d / f"slurmd-{n}.pid"))
        cluster.wait_idle()
    except (OSError, subprocess.SubprocessError, Unavailable) as e:
        tail = cluster.log_tail()
        cluster.stop()
        raise StartFailed(f"could not start the SLURM cluster: {e}\n{tail}") from None
    return cluster


def _started(start):
    """start(), once more if it fails (a port picked as free can be taken by someone else before
    the daemon binds it); a skip with the reason where it cannot be set up at all (not root), a
    test failure where it does not start or a package is missing (naming `make sysdeps`: tests
    never run apt)."""
    try:
        try:
            return start()
        except StartFailed:
            return start()
    except Unavailable as e:
        pytest.skip(str(e))
    except (StartFailed, Missing) as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def slurm():
    """A running two-node cluster (n1, n2), or a skip/failure as _started says."""
    cluster = _started(start_cluster)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sshd():
    """A private sshd on 127.0.0.1 (free port, throwaway keys, two host names of its own) and
    pdsh, or a skip/failure as _started says."""
    from helpers import sshd

    server = _started(sshd.start_sshd)
    try:
        yield server
    finally:
        server.stop()
