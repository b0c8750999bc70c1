"""The staging arena and the writer process of checkpoint.async, without DeepSpeed: what the
writer writes loads back (weights-only) equal to what was staged — views still share their
storage, dtypes, Parameters and requires_grad kept — and a write error comes back as an answer
naming the file, with no temp file left; what checkpoint.async true/false/auto resolves to from
every rank's figures. The trainer-level tests are test_async_checkpoint.py."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from pretrain.train.async_ckpt import Arena, stage_payload
from pretrain.train.ckpt_writer import Writer, fork_writer


def _writer(arena: Arena) -> Writer:
    writer = fork_writer()  # forked from this test process, as a rank forks its own
    writer.attach(arena.fd)
    return writer


def _state() -> dict:
    base = torch.arange(12, dtype=torch.float32)
    leaf = torch.nn.Parameter(torch.randn(3, 4))
    return {"view_a": base[:6], "view_b": base[6:].view(2, 3), "bf16": torch.ones(5).bfloat16(),
            "param": leaf, "non_leaf": leaf * 2, "step": 7, "nested": [{"x": torch.zeros(0)}],
            "ints": torch.tensor([1, 2, 3])}


def test_staged_state_is_written_and_loads_back_equal(tmp_path):
    arena = Arena(reserve_bytes=1 << 16)
    writer = _writer(arena)
    try:
        state = _state()
        expected = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()}
        payload = stage_payload(state, arena)
        state["view_a"].add_(100)  # the live state moves on: the staged copy must not
        path = tmp_path / "step" / "file.pt"
        path.parent.mkdir()
        writer.send({"op": "file", "path": str(path), "rel": "file.pt", "payload": payload,
                     "zipfile": True})
        writer.send({"op": "end", "tag": "step"})
        answer = writer.answer()
    finally:
        writer.close()
        arena.close()
    assert answer["error"] is None
    assert answer["files"] == {"file.pt": {
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    assert not list(path.parent.glob("*.tmp"))
    loaded = torch.load(path, weights_only=True)
    for key in ("view_a", "view_b", "bf16", "param", "non_leaf", "ints"):
        assert loaded[key].dtype == expected[key].dtype
        assert torch.equal(loaded[key].detach(), expected[key].detach()), key
    assert loaded["step"] == 7 and loaded["nested"][0]["x"].numel() == 0
    assert isinstance(loaded["param"], torch.nn.Parameter)
    assert loaded["view_a"].untyped_storage().data_ptr() == \
        loaded["view_b"].untyped_storage().data_ptr()  # one storage, written once


def _write_one(target, state: dict, before=None) -> tuple[dict, Writer]:
    """A fresh writer writes `state` staged to `target` as one checkpoint's one file; its answer
    and the (closed) writer. `before(writer)` runs right after the fork."""
    arena = Arena()
    writer = fork_writer()
    try:
        if before:
            before(writer)
        writer.attach(arena.fd)
        writer.send({"op": "file", "path": str(target), "rel": target.name,
                     "payload": stage_payload(state, arena), "zipfile": True})
        writer.send({"op": "end", "tag": "step"})
        return writer.answer(), writer
    finally:
        writer.close()
        arena.close()


def test_a_failed_write_is_answered_with_the_file_and_no_temp_left(tmp_path):
    target = tmp_path / "missing-dir" / "file.pt"  # its folder does not exist
    answer, _ = _write_one(target, {"w": torch.ones(3)})
    assert answer["files"] == {} and answer["error"]["file"] == str(target)
    assert "No such file or directory" in answer["error"]["error"]
    assert not answer["error"]["disk_full"]
    assert not tmp_path.joinpath("missing-dir").exists()


def test_a_dead_writer_is_reported_with_its_pid(tmp_path):
    arena = Arena()
    writer = _writer(arena)
    try:
        os.kill(writer.pid, signal.SIGKILL)
        answer = writer.answer()
    finally:
        writer.close()
        arena.close()
    assert answer["error"]["writer_died"]
    assert answer["error"]["file"] == f"checkpoint writer process (pid {writer.pid})"
    assert "it died (signal 9)" in answer["error"]["error"]


def test_a_writer_that_fails_says_why_on_stderr_and_is_reported_dead(capfd):
    """A job it cannot read (here: not a pickle) ends the forked writer through os._exit(1)
    after its traceback, flushed to the rank's stderr; the trainer's answer says it died."""
    from pretrain.train.ckpt_writer import HEADER

    arena = Arena()
    writer = _writer(arena)
    try:
        writer.jobs.write(HEADER.pack(4) + b"oops")
        writer.jobs.flush()
        answer = writer.answer()
    finally:
        writer.close()
        arena.close()
    assert answer["error"]["writer_died"]
    assert "it died (exit code 1)" in answer["error"]["error"]
    assert "UnpicklingError" in capfd.readouterr().err


def test_stop_signals_while_the_writer_starts_do_not_kill_it(tmp_path):
    """Ctrl-C/SIGTERM/SIGUSR1 reach the writer with its rank's process group; one that comes
    right after the fork (before it has set them to be ignored) must not end it: the trainer
    waits for the write in flight and needs its answer."""
    def stop_signals(writer: Writer) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            os.kill(writer.pid, sig)  # at once, as the child starts

    path = tmp_path / "step" / "file.pt"
    path.parent.mkdir()
    answer, writer = _write_one(path, {"x": torch.ones(3)}, before=stop_signals)
    assert answer["error"] is None, answer
    assert writer.returncode == 0
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))


def test_a_writer_closed_before_it_gets_an_arena_exits_at_once():
    """checkpoint.async=auto forks the writer at the start and may then save synchronously:
    closing it unused ends it cleanly; while it lives it is named `ckpt-writer` (ps, /proc)."""
    writer = fork_writer()
    try:
        comm = Path(f"/proc/{writer.pid}/comm")
        deadline = time.monotonic() + 10
        while comm.read_text().strip() != "ckpt-writer" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert comm.read_text().strip() == "ckpt-writer"
    finally:
        writer.close(timeout=10)
    assert writer.returncode == 0
    writer.close()  # again: nothing happens


def test_auto_goes_async_only_for_a_large_share_that_host_ram_can_stage():
    """checkpoint.async resolved from every rank's (host, share, MemAvailable): auto is
    synchronous below AUTO_MIN_SHARE_BYTES or where a node's RAM cannot hold its ranks' arenas
    (saying which and why), true refuses where RAM is short, false never asks."""
    from pretrain.train.async_ckpt import (
        AUTO_MIN_SHARE_BYTES,
        AsyncRefused,
        arena_bytes,
        choose_async,
    )
    from pretrain.train.checkpoint import human_bytes
    from pretrain.train.config import CheckpointConfig

    big, tiny, plenty = 1 << 30, 3_100_000, 1 << 40
    assert AUTO_MIN_SHARE_BYTES == 256 << 20  # the figure the config's description names
    assert "256 MiB" in CheckpointConfig.model_fields["async_"].description
    assert choose_async("auto", [("a", tiny, plenty), ("a", 0, plenty)]) == (
        False, "checkpoints: synchronous (checkpoint.async=auto: a rank saves at most 3.1 MB, "
               "below 256 MiB)")
    assert choose_async("auto", [("a", big, plenty), ("b", big, plenty)]) == (
        True, "checkpoints: in the background (checkpoint.async=auto: a rank saves up to "
              "1.07 GB, at least 256 MiB, and host RAM holds the staging arenas)")
    short = [("a", big, plenty), ("a", big, plenty), ("b", big, 2 * big), ("b", big, None)]
    need = 2 * arena_bytes(big)  # node b's two arenas; its first rank's MemAvailable counts
    assert choose_async("auto", short) == (
        False, f"checkpoints: synchronous (checkpoint.async=auto: host RAM on b has "
               f"{human_bytes(2 * big)} available, the staging arenas need ≈ "
               f"{human_bytes(need)})")
    assert choose_async("auto", [("a", big, None)])[0]  # no /proc/meminfo: nothing to check
    with pytest.raises(AsyncRefused, match=f"needs ≈ {human_bytes(need)} of host RAM on this "
                                           "node.* set checkpoint.async=false"):
        choose_async(True, short)
    assert choose_async(True, [("a", tiny, plenty)])[0]
    assert choose_async(False, short) == (False, "checkpoints: synchronous "
                                                 "(checkpoint.async=false)")
