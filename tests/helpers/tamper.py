"""Checkpoint files as an attacker or a bad disk leaves them, and what a test compares."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import torch


class Payload:
    """Unpickling this runs `touch MARKER` (what a tampered checkpoint file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_payload(path: Path, marker: Path, zip_archive: bool = True) -> None:
    """Replace `path` with a torch.save archive (or a bare pickle) whose pickle runs a command."""
    if zip_archive:
        torch.save({"optimizer_state_dict": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))


def payload_is_live(path: Path, marker: Path) -> bool:
    """The file really runs the command when unpickled without restrictions (so a test that
    checks it does not run can fail); the marker is removed again."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)  # noqa: S301 - the point: show the payload works
    live = marker.exists()
    marker.unlink(missing_ok=True)
    return live


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` with its size, mtime and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}
