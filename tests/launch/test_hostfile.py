"""`launch hostfile`: hostfile parsing and the DeepSpeed command it builds."""

from __future__ import annotations

import argparse

import pytest

from launch.common import LaunchError
from launch.hostfile import deepspeed_command, read_hostfile


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


def test_ssh_mode_quotes_user_values_for_the_remote_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nasty = "logging.wandb.name=a'; touch pwned; echo '$(id)"
    args = argparse.Namespace(hostfile=str(tmp_path / "h"), master_port=29511, master_addr=None,
                              ssh_port=None, no_ssh=False, node_rank=None,
                              config=str(tmp_path / "c.yaml"), overrides=[nasty])
    cmd = deepspeed_command(args, {"a": 1, "b": 1})
    remote = " ".join(cmd[cmd.index("pretrain.train") + 1:])  # how DeepSpeed joins them
    import shlex
    import subprocess

    # the remote shell sees exactly the original values, and nothing runs
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {remote}"], capture_output=True,
                         text=True, cwd=tmp_path, check=True).stdout.splitlines()
    assert out == ["--config", str(tmp_path / "c.yaml"), nasty]
    assert not (tmp_path / "pwned").exists()
    assert shlex.split(remote)[-1] == nasty
