"""free_port: the OS's pick, or one from ARROWTRAIN_PORT_RANGE (which the suite's xdist workers
use to keep their ports apart)."""

import random
import socket

import pytest

from pretrain.train.distenv import PORT_RANGE_ENV, free_port


def _held_quiet_port(sock: socket.socket) -> int:
    """Bind `sock` to a port of 10000-19999: below the kernel's ephemeral ports and the suite's
    worker ranges, so its neighbour is free too."""
    while True:
        port = random.randrange(10000, 19999)
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def test_a_port_range_is_honoured_and_a_taken_port_skipped(monkeypatch):
    with socket.socket() as held:
        taken = _held_quiet_port(held)
        monkeypatch.setenv(PORT_RANGE_ENV, f"{taken}-{taken + 1}")
        picks = {free_port() for _ in range(20)}
    assert picks == {taken + 1}


def test_a_full_or_malformed_range_is_named(monkeypatch):
    with socket.socket() as held:
        taken = _held_quiet_port(held)
        monkeypatch.setenv(PORT_RANGE_ENV, f"{taken}-{taken}")
        with pytest.raises(OSError, match=f"{PORT_RANGE_ENV}={taken}-{taken}: no free port"):
            free_port()
    for bad in ("5000", "a-b", "3000-2000", "80-90"):
        monkeypatch.setenv(PORT_RANGE_ENV, bad)
        with pytest.raises(ValueError, match=PORT_RANGE_ENV):
            free_port()
