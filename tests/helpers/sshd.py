"""A private sshd on 127.0.0.1 for the `launch hostfile` ssh tests (facts: notes/slurm.md).

Everything lives in one temp folder and touches no shared state: a throwaway host key and client
key, an sshd on a free high port that accepts only that key (no PAM, no passwords), an ssh client
config that maps two host names of our own (`HOSTS`) to 127.0.0.1 at that port, and an `ssh`
wrapper (`bin/ssh` -> `/usr/bin/ssh -F <our config>`) that goes first on PATH, so DeepSpeed's
runner and pdsh reach the hosts without anyone's ~/.ssh or /etc/hosts being changed.
`stop()` ends only the sshd it started (by its PID) and removes the temp folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from helpers.servers import StartFailed, check_packages
from pretrain.train.distenv import free_port

PACKAGES = ["openssh-server", "pdsh"]  # installed by `make sysdeps`
SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it; left in place (shared)


def _missing() -> list[str]:
    return [n for n, ok in (("sshd", SSHD.exists()), ("ssh", shutil.which("ssh")),
                            ("ssh-keygen", shutil.which("ssh-keygen")),
                            ("pdsh", shutil.which("pdsh"))) if not ok]


@dataclass
class Sshd:
    dir: Path
    port: int
    hosts: tuple[str, str]
    proc: subprocess.Popen | None = None

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    @property
    def env(self) -> dict[str, str]:
        """os.environ with our `ssh` wrapper first on PATH."""
        return {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def ssh(self, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", host, command], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        log = self.dir / "sshd.log"
        text = log.read_text(errors="replace") if log.exists() else "(no sshd log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ends the listener; sessions end with it
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "arrowtrain-test",
                    "-f", str(path)], check=True, capture_output=True, timeout=60)


def _write_configs(s: Sshd) -> None:
    d = s.dir
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "sshd_config").write_text(f"""\
Port {s.port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile none
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
AcceptEnv AWS_*
""")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{s.port} {host_pub[0]} {host_pub[1]}\n")
    (d / "ssh_config").write_text(f"""\
Host {' '.join(s.hosts)}
    HostName 127.0.0.1
    Port {s.port}
    User root
    IdentityFile {d}/client_key
    IdentitiesOnly yes
    UserKnownHostsFile {d}/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    LogLevel ERROR
""")
    s.bin.mkdir()
    wrapper = s.bin / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d}/ssh_config "$@"\n')
    wrapper.chmod(0o755)


def _wait_ready(s: Sshd, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            raise StartFailed(f"sshd exited with {s.proc.returncode}\n{s.log_tail()}")
        res = s.ssh(s.hosts[0], "true", timeout=15)
        if res.returncode == 0:
            return
        last = res.stderr.strip()
        time.sleep(0.2)
    raise StartFailed(f"ssh {s.hosts[0]} true still fails after {timeout_s}s: {last}\n"
                      f"{s.log_tail()}")


def start_sshd() -> Sshd:
    check_packages("sshd", "sshd", _missing(), PACKAGES)
    d = Path(tempfile.mkdtemp(prefix="arrowtrain-sshd-", dir="/tmp"))
    tag = uuid.uuid4().hex[:6]
    s = Sshd(d, free_port(), (f"arrowtrain-{tag}-a", f"arrowtrain-{tag}-b"))
    try:
        _keygen(d / "host_key")
        _keygen(d / "client_key")
        _write_configs(s)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        s.proc = subprocess.Popen([str(SSHD), "-D", "-f", str(d / "sshd_config"),
                                   "-E", str(d / "sshd.log")], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        _wait_ready(s)
    except (OSError, subprocess.SubprocessError, StartFailed) as e:
        tail = s.log_tail()
        s.stop()
        raise StartFailed(f"could not start sshd on 127.0.0.1:{s.port}: {e}\n{tail}") from None
    return s
