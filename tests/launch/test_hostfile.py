"""`launch hostfile`: hostfile parsing, the DeepSpeed command it builds (quoted for the remote
shell as DeepSpeed's pdsh runner joins it), pdsh's per-host exit codes, the ssh pre-check, and
signals that reach exactly this launch's trainers. The whole ssh path runs in test_e2e.py."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from launch.common import LaunchError
from launch.hostfile import (
    check_hosts,
    deepspeed_command,
    host_codes_exit,
    pdsh_exit,
    pdsh_host,
    read_hostfile,
    run_pdsh,
)
from launch.signal_trainers import LAUNCH_ID_VAR, signal_trainers, trainer_pids


def test_read_hostfile(tmp_path):
    h = tmp_path / "hosts"
    h.write_text("# cluster\nnode1 slots=2\n\nnode2 slots=1  # spare\n")
    assert read_hostfile(str(h)) == {"node1": 2, "node2": 1}


@pytest.mark.parametrize("text,needle", [
    ("node1 slots=2\nnode2 slots=x\n", "line 2"), ("node1\n", "line 1"),
    ("n1 slots=1\nn1 slots=1\n", "listed twice"), ("# empty\n", "no hosts"),
    ("$(id) slots=1\n", "line 1"), ("n1 slots=0\n", "line 1"),
])
def test_bad_hostfiles_name_the_line(tmp_path, text, needle):
    h = tmp_path / "hosts"
    h.write_text(text)
    with pytest.raises(LaunchError, match=needle) as err:
        read_hostfile(str(h))
    assert str(h) in str(err.value)


def test_command_uses_module_mode_without_local_rank_argument(tmp_path):
    args = argparse.Namespace(hostfile=str(tmp_path / "h"), master_port=29511,
                              master_addr="127.0.0.1", ssh_port=None, no_ssh=True, node_rank=1,
                              config=str(tmp_path / "c.yaml"), overrides=["train.max_steps=3"])
    cmd = deepspeed_command(args, {"a": 1, "b": 1})
    i = cmd.index("pretrain.train")
    assert cmd[i - 1] == "--node_rank=1" or cmd[i - 2:i] == ["--node_rank", "1"]
    assert {"--no_local_rank", "--module", "--no_ssh"} <= set(cmd[:i])
    assert cmd[i:] == ["pretrain.train", "--config", str(tmp_path / "c.yaml"), "train.max_steps=3"]


def _deepspeed_join(words: list[str]) -> str:
    """How DeepSpeed 0.19's PDSHRunner.parse_user_args + get_cmd put user arguments into the
    remote command line: double quotes (escaping only `"`) around an argument with a space."""
    return " ".join('"{}"'.format(w.replace('"', '\\"')) if " " in w else w for w in words)


NASTY = ["logging.wandb.name=a'; touch pwned; echo '$(id)", "logging.wandb.name=a b",
         """logging.wandb.name=it's a "test" $HOME `touch pwned` \\ end""",
         "run_dir=/tmp/with space/run", 'logging.wandb.name=x\\" y', "plain=1"]


def test_ssh_mode_quotes_user_values_for_the_remote_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(hostfile=str(tmp_path / "h"), master_port=29511, master_addr=None,
                              ssh_port=None, no_ssh=False, node_rank=None,
                              config=str(tmp_path / "c.yaml"), overrides=NASTY)
    cmd = deepspeed_command(args, {"a": 1, "b": 1})
    remote = _deepspeed_join(cmd[cmd.index("pretrain.train") + 1:])
    # the remote shell sees exactly the original values, and nothing runs
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {remote}"], capture_output=True,
                         text=True, cwd=tmp_path, check=True).stdout.splitlines()
    assert out == ["--config", str(tmp_path / "c.yaml"), *NASTY]
    assert not (tmp_path / "pwned").exists()
    assert "--no_ssh_check" in cmd  # our own check asks every host first


@pytest.mark.parametrize("line,expect", [
    ("pdsh@vm: node1: ssh exited with exit code 75", ("node1", 75)),
    ("pdsh@head: 10.0.0.2: ssh exited with exit code 255\n", ("10.0.0.2", 255)),
    ("pdsh@vm: n2: ssh exited with nonzero status 0x0009", ("n2", 137)),  # SIGKILL
    ("node1: step 3/10 loss 4.2", None), ("pdsh@vm: node1: connect: refused", None),
])
def test_pdsh_exit_lines(line, expect):
    assert pdsh_exit(line) == expect


def test_host_codes_combine_like_ranks_not_like_pdsh_max():
    hosts = ["a", "b", "c"]
    assert host_codes_exit(hosts, {}, 0) == 0
    assert host_codes_exit(hosts, {"a": 75, "b": 75, "c": 75}, 75) == 75
    assert host_codes_exit(hosts, {"a": 75, "c": 75}, 75) == 75  # b finished (0)
    assert host_codes_exit(hosts, {"a": 75, "b": 1}, 75) == 1  # pdsh -S says max = 75
    assert host_codes_exit(hosts, {"c": 2, "a": 75}, 75) == 2
    assert host_codes_exit(hosts, {}, 1) == 1  # the runner failed before pdsh
    assert host_codes_exit(hosts, {"zz": 3}, 3) == 3  # a label we could not map still counts
    assert pdsh_host("node1", ["node1.cluster", "node2.cluster"]) == "node1.cluster"
    assert pdsh_host("node1", ["node1.a", "node1.b"]) is None


FAKE_TRAINER = """\
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(75))
print("ready", flush=True)
time.sleep(60)
"""


def test_signal_trainers_reaches_only_this_launchs_trainer_processes(tmp_path):
    """Real processes: a `python -m pretrain.train` of this launch gets the signal; the same
    module of another launch, and a launch.py-like parent naming it as an argument, do not."""
    pkg = tmp_path / "fake" / "pretrain"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(FAKE_TRAINER)
    ours, other = uuid.uuid4().hex, uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    cmds = [([sys.executable, "-u", "-m", "pretrain.train", "--config", "x"], ours),
            ([sys.executable, "-u", "-m", "pretrain.train", "--config", "x"], other),
            ([sys.executable, "-c", FAKE_TRAINER, "--module", "pretrain.train"], ours)]
    procs = [subprocess.Popen(c, env={**env, LAUNCH_ID_VAR: i}, stdout=subprocess.PIPE,
                              cwd=tmp_path) for c, i in cmds]  # cwd: not the real package
    try:
        for p in procs:
            assert p.stdout.readline() == b"ready\n"
        assert trainer_pids(ours) == [procs[0].pid]
        assert signal_trainers(ours, signal.SIGUSR1) == [procs[0].pid]
        assert procs[0].wait(timeout=30) == 75
        time.sleep(0.2)
        assert procs[1].poll() is None and procs[2].poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.ssh
def test_pdsh_reports_each_hosts_code_and_they_combine(sshd):
    """Real pdsh over ssh: host 0 exits 75, host 1 exits 1. pdsh -S alone would say 75."""
    hosts = list(sshd.hosts)
    failed, output = run_pdsh(hosts, "echo hello; exit $(( %n == 0 ? 75 : 1 ))", sshd.env, None)
    assert failed == {hosts[0]: 75, hosts[1]: 1}
    assert output == {h: ["hello"] for h in hosts}
    assert host_codes_exit(hosts, failed, 75) == 1


@pytest.mark.ssh
def test_check_hosts_names_every_unreachable_host_before_anything_starts(sshd, tmp_path):
    check_hosts(list(sshd.hosts), sshd.env, None)  # both answer: no error
    with pytest.raises(LaunchError) as err:
        check_hosts([sshd.hosts[0], "no-such-host.invalid"], sshd.env, None)
    msg = str(err.value)
    assert "1 of 2 host(s)" in msg and "no-such-host.invalid: ssh: Could not resolve" in msg
    assert sshd.hosts[0] not in msg
    with pytest.raises(LaunchError, match=r"2 of 2 host\(s\)[\s\S]*No such file or directory"):
        check_hosts(list(sshd.hosts), sshd.env, None, cwd=str(tmp_path / "not-on-the-hosts"))
