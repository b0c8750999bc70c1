"""A real small filesystem for the disk-full tests: a tmpfs of a given size, mounted for the
test and unmounted after (skips where mounting needs root and the test is not root)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's -o size=, e.g. "3500k") on `mnt` (created); yield it."""
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        for _ in range(20):  # a rank that just exited may still hold a file open for a moment
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


NO_SPACE_AT_STEP_6 = re.compile(
    r"no space left on device while saving step 6 to (\S+) \(a checkpoint is ≈ 2\.\d MB, "
    r"[\d.]+ [kMG]?B free\)\. The partial folder was removed; (\S+) still names step_00000003")


def assert_step_6_save_ran_out_of_room(logs: str, ck: Path) -> None:
    """SMALL_RUN on `small_disk`: the step-6 save (checkpoint folder `ck`) ran out of room, said
    once and clearly (no traceback); its partial folder is gone and step 3 is still `latest`."""
    from pretrain.train import checkpoint as ckpt
    from pretrain.train import checkpoint_meta as cm

    m = NO_SPACE_AT_STEP_6.search(logs)
    assert m and m.groups() == (str(ck / "step_00000006"), str(ck / cm.LATEST)), logs
    assert logs.count("no space left on device") == 1 and "Traceback" not in logs
    assert cm.list_tags(ck) == ["step_00000003"]
    assert (ck / cm.LATEST).read_text().strip() == "step_00000003"
    assert ckpt.choose_checkpoint(ck, ["step_00000003"])[1].step == 3
