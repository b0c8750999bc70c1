"""`launch hostfile` with s3:// data: the AWS variables reach the ssh hosts inside ssh
(SendEnv / AcceptEnv), never through DeepSpeed's env file or a command line; a host whose sshd
does not accept them is refused before anything starts, naming the variable."""

from __future__ import annotations

import pytest

from launch.common import LaunchError
from launch.hostfile import check_hosts, env_file_lines, send_aws_env

pytestmark = pytest.mark.ssh
SECRET = "s3cr3t-must-not-travel-in-files"


def test_aws_variables_travel_inside_ssh(sshd):
    env = {**sshd.env, "AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    names = send_aws_env(env)
    assert names == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"]
    assert SECRET not in env["PDSH_SSH_ARGS_APPEND"]
    check_hosts(list(sshd.hosts), env, None, aws_names=names)        # they arrive
    assert not any(SECRET in line for line in env_file_lines(env))   # not in the env file


def test_a_host_that_does_not_receive_them_is_named(sshd):
    env = {**sshd.env, "AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": SECRET}
    with pytest.raises(LaunchError) as e:          # no SendEnv: nothing arrives
        check_hosts(list(sshd.hosts), env, None, aws_names=["AWS_SECRET_ACCESS_KEY"])
    assert "AWS_SECRET_ACCESS_KEY did not arrive over ssh" in str(e.value)
    assert "AcceptEnv AWS_*" in str(e.value) and SECRET not in str(e.value)
