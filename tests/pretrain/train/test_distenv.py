"""free_port: the OS's pick, or one from ARROWTRAIN_PORT_RANGE (which the suite's xdist workers
use to keep their ports apart); DeepSpeed's Muon module imported without compiling."""

import random
import socket
import subprocess
import sys

import pytest
from helpers.dist import REPO

from pretrain.train.distenv import PORT_RANGE_ENV, compile_on_first_call, free_port


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


def test_compile_on_first_call_compiles_once_at_the_first_call():
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return lambda *a: ("compiled", fn(*a))

    deferred = compile_on_first_call(fake_compile)

    @deferred(dynamic=False)           # as a decorator factory (DeepSpeed's form)
    def double(x):
        return 2 * x

    triple = deferred(lambda x: 3 * x, fullgraph=True)  # and called directly
    assert calls == [] and double.__name__ == "double"
    assert double(2) == ("compiled", 4) and double(5) == ("compiled", 10)
    assert triple(1) == ("compiled", 3)
    assert calls == [{"dynamic": False}, {"fullgraph": True}]  # once each


def test_deepspeed_import_leaves_muons_compile_for_its_first_call():
    """A fresh rank imports DeepSpeed through import_deepspeed: the Muon module that its ZeRO
    check imports is loaded without building inductor wrappers, and torch.compile is torch's
    again afterwards."""
    code = ("import sys, torch\n"
            "real = torch.compile\n"
            "from pretrain.train.distenv import MUON_MODULE, import_deepspeed\n"
            "import_deepspeed()\n"
            "import deepspeed.runtime.zero.muon.original_muon as om\n"
            "from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam\n"
            "assert MUON_MODULE in sys.modules and torch.compile is real\n"
            "assert 'torch._inductor.compile_fx' not in sys.modules, 'inductor imported'\n"
            "assert not hasattr(om.muon_update, '_torchdynamo_orig_callable')\n"
            "assert om.muon_update.__wrapped__.__name__ == 'muon_update'\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
