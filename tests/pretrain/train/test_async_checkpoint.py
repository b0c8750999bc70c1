"""checkpoint.async (issue 21) with real DeepSpeed on 2 gloo ranks: the background save keeps
losses bitwise equal to the synchronous straight run through a stop (exit 75, its save
committed) and a resume, at ZeRO-1 and ZeRO-3; each save logs checkpoint_blocking_ms and
checkpoint_write_ms. Faults: kill -9 of a rank while its writer is in flight resumes from the
previous complete checkpoint, bitwise; a killed writer process is reported and `latest` stays;
a full disk during a background write gives the clear message, the partial folder is removed.
The default checkpoint.async=auto saves a tiny run synchronously and says why.

ARROWTRAIN_TEST_WRITER_DELAY_S holds each file in the writer for a moment, so that a write is
certainly in flight when a test acts (the kills are triggered by what the run shows on disk:
a checkpoint folder without meta.json while `latest` names the previous one)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from helpers.disks import assert_step_6_save_ran_out_of_room
from helpers.dist import run_ranks, start_ranks

from pretrain.train import checkpoint as ckpt
from pretrain.train import checkpoint_meta as cm
from pretrain.train import events

ASYNC = ("checkpoint.async=true",)
SLOW_WRITER = {"ARROWTRAIN_TEST_WRITER_DELAY_S": "0.5"}


def _latest(run: Path) -> str | None:
    path = run / "checkpoints" / cm.LATEST
    return path.read_text().strip() if path.is_file() else None


def _in_flight(run: Path, tag: str, previous: str | None) -> bool:
    """`tag`'s folder has files but no meta.json yet, and `latest` still names `previous`."""
    d = run / "checkpoints" / tag
    try:
        busy = d.is_dir() and any(d.iterdir()) and not (d / cm.META).exists()
    except OSError:
        return False
    return busy and _latest(run) == previous


def _writers(pid: int) -> list[int]:
    """The checkpoint writer processes (named ckpt-writer) whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            name = (entry / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and name == "ckpt-writer":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in (Path("/proc") / str(pid) / "status").read_text().lower()
    except OSError:
        return False


def _save_rows(run: Path, runs) -> dict[int, dict]:
    return {r["checkpoint_step"]: r for r in runs.read_metrics(run) if "checkpoint_step" in r}


def test_auto_saves_a_tiny_run_synchronously_and_says_why(straight_run):
    """The default checkpoint.async=auto: a few-MB checkpoint is saved synchronously (no
    writer process to start), rank 0 says so once, and the start row records the choice while
    config.yaml keeps `auto` (decided anew at each start)."""
    run = straight_run(0)
    logs = [(run.parent / "logs" / f"rank{r}.log").read_text() for r in (0, 1)]
    line = re.findall(r"checkpoints: synchronous \(checkpoint\.async=auto: a rank saves at "
                      r"most [\d.]+ MB, below 256 MiB\)", logs[0])
    assert len(line) == 1 and "checkpoints:" not in logs[1], logs
    assert "writing in the background" not in logs[0]
    starts = [r for r in events.read_jsonl(run / events.EVENTS_FILE) if r["event"] == "start"]
    assert [r["checkpoint_async"] for r in starts] == [False]
    assert yaml.safe_load((run / "config.yaml").read_text())["checkpoint"]["async"] == "auto"


@pytest.mark.parametrize("stage", [1, 3])
def test_async_stop_and_resume_keep_losses_bitwise(stage, straight_run, runs, tiny_data,
                                                   tmp_path):
    run = tmp_path / "run"
    args = runs.small_run_args(run, tiny_data, stage, *ASYNC)
    first = run_ranks([*args, "train.stop_at_step=5"], tmp_path / "logs1", expect=75)
    assert _latest(run) == "step_00000005"  # the stop waited for its save to commit
    assert cm.is_complete(run / "checkpoints" / "step_00000005")
    assert "writing in the background" in first.logs(10**6)
    saves = _save_rows(run, runs)
    assert sorted(saves) == [3, 5]
    assert all(r["checkpoint_blocking_ms"] > 0 and r["checkpoint_write_ms"] > 0
               for r in saves.values())

    ranks = run_ranks(args, tmp_path / "logs2")
    logs = ranks.logs(10**6)
    assert "resumed from" in logs and "step_00000005" in logs
    assert runs.train_losses(run) == runs.train_losses(straight_run(stage))
    assert _latest(run) == "step_00000008" and sorted(_save_rows(run, runs)) == [3, 5, 6, 8]
    meta = cm.read_meta(run / "checkpoints" / "step_00000008")
    assert ckpt.choose_checkpoint(run / "checkpoints", ["step_00000008"])[1] == meta


def test_killed_writer_is_reported_and_latest_stays(runs, tiny_data, tmp_path):
    run = tmp_path / "run"
    ranks = start_ranks(runs.small_run_args(run, tiny_data, 1, *ASYNC), tmp_path / "logs",
                        env=SLOW_WRITER)
    try:
        ranks.wait_for(lambda: _in_flight(run, "step_00000006", "step_00000003"),
                       "the step-6 write in flight")
        victims = _writers(ranks.procs[1].pid)
        assert len(victims) == 1, ranks.logs()
        os.kill(victims[0], signal.SIGKILL)
        codes = ranks.wait(240)
    finally:
        ranks.kill()
    logs = ranks.logs(10**6)
    assert codes == [1, 1], logs
    ck = run / "checkpoints"
    assert re.search(rf"saving step 6 to {ck / 'step_00000006'} failed on rank 1: checkpoint "
                     rf"writer process \(pid {victims[0]}\): it died \(signal 9\) before the "
                     rf"checkpoint's files were written\. The partial folder was removed; "
                     rf"{ck / cm.LATEST} still names step_00000003\. Run the same command", logs)
    assert logs.count("it died (signal 9)") == 1 and "Traceback" not in logs
    assert _latest(run) == "step_00000003" and cm.list_tags(ck) == ["step_00000003"]


def test_rank_killed_while_its_writer_is_in_flight_resumes_bitwise(straight_run, runs,
                                                                   tiny_data, tmp_path):
    run = tmp_path / "run"
    args = runs.small_run_args(run, tiny_data, 1, *ASYNC)
    ranks = start_ranks(args, tmp_path / "logs1", env=SLOW_WRITER)
    try:
        ranks.wait_for(lambda: _in_flight(run, "step_00000006", "step_00000003"),
                       "the step-6 write in flight")
        writers = [w for p in ranks.procs for w in _writers(p.pid)]
        assert len(writers) == 2, ranks.logs()
        ranks.procs[1].send_signal(signal.SIGKILL)
        ranks.wait(240)  # rank 0 fails at its next collective with rank 1
    finally:
        ranks.kill()
    assert _latest(run) == "step_00000003"
    deadline = time.monotonic() + 30  # the killed rank's writer follows it (PR_SET_PDEATHSIG)
    while any(_alive(w) for w in writers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in writers)

    logs = run_ranks(args, tmp_path / "logs2").logs(10**6)
    assert f"resumed from {run / 'checkpoints' / 'step_00000003'} at step 3" in logs
    assert runs.train_losses(run) == runs.train_losses(straight_run(1))
    assert _latest(run) == "step_00000008"


def test_disk_full_during_background_write_is_clear_and_removes_the_partial(
        small_disk, runs, tiny_data, tmp_path):
    run = small_disk / "run"
    ranks = run_ranks(runs.small_run_args(run, tiny_data, 1, *ASYNC), tmp_path / "logs",
                      expect=1)
    logs = ranks.logs(10**6)
    ck = run / "checkpoints"
    assert_step_6_save_ran_out_of_room(logs, ck)
    assert not [p for p in ck.rglob("*") if p.name.endswith(".tmp")]


def test_sigterm_to_the_process_groups_mid_write_ends_committed_with_75(runs, tiny_data,
                                                                       tmp_path):
    """SIGTERM to each rank's whole process group (as SLURM sends it) reaches the writers too:
    they ignore it, the stop waits for the write in flight and commits its own save."""
    run = tmp_path / "run"
    ranks = start_ranks(runs.small_run_args(run, tiny_data, 1, *ASYNC), tmp_path / "logs",
                        env=SLOW_WRITER)
    codes = ranks.signal_groups_when(lambda: _in_flight(run, "step_00000003", None),
                                     "the step-3 write in flight", signal.SIGTERM)
    logs = ranks.logs(10**6)
    assert codes == [75, 75], logs
    stopped = max(s for s, _ in runs.train_losses(run))
    assert _latest(run) == cm.tag_for(stopped) and stopped >= 3
    assert cm.is_complete(run / "checkpoints" / cm.tag_for(stopped))
    assert cm.is_complete(run / "checkpoints" / "step_00000003")
