"""W&B offline across restarts, read back from W&B's own transaction logs (`wandb leet inspect`).

Three real processes play three starts of one run folder, as the trainer's Metrics sees them:
start 1 logs steps 1-5 and "dies" (its last checkpoint was step 3); start 2 resumes from step 3,
redoes 4-5, logs 6 and dies too (still no newer checkpoint); start 3 resumes from step 3 again
and finishes at step 8. W&B must hold one run id in every segment, each asking to resume, and
`_step` = the training step, every step exactly once across the segments in start order —
and metrics.jsonl every step exactly once too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.dist import REPO

# One Python imports the trainer's modules once, then forks a fresh process per start (W&B is
# imported in the child: every start gets its own W&B process state, as a restart does).
STARTS = """\
import json, os, sys
from pathlib import Path
from pretrain.train.config import WandbConfig
from pretrain.train.metrics import Metrics

run_dir = Path(sys.argv[1])
for resumed, first, last in json.loads(sys.argv[2]):
    pid = os.fork()
    if pid == 0:
        m = Metrics(run_dir, True, WandbConfig(mode="offline", project="p"), {"seed": 1}, resumed)
        for step in range(first, last + 1):
            m.log({"step": step, "loss": 10.0 / step, "tokens_per_sec": None})
            if step % 4 == 0:
                m.log({"step": step, "val_loss": 20.0 / step})
        m.close()
        print(json.dumps({"run_id": m.run_id, "sent_through": m.wandb_sent_through}), flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit(f"start {resumed, first, last} failed: wait status {status}")
"""


def _starts(run_dir: Path, starts: list[tuple[int, int, int]]) -> list[dict]:
    """Run the starts (resumed_step, first step, last step) one after the other."""
    res = subprocess.run([sys.executable, "-c", STARTS, str(run_dir), json.dumps(starts)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]


def wandb_segments(run_dir: Path) -> list[list[dict]]:
    """The records of each offline segment (wandb/offline-run-*/run-*.wandb), oldest first,
    each file read by W&B's own `wandb leet inspect --json` (all files at once)."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, f"no .wandb file under {run_dir / 'wandb'}"
    cli = str(Path(sys.executable).with_name("wandb"))
    procs = [subprocess.Popen([cli, "leet", "inspect", "--json", str(f)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for f in files]
    segments = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        segments.append([json.loads(x) for x in out.splitlines() if x.startswith("{")])
    return sorted(segments, key=lambda recs: next(r["run"]["start_time"] for r in recs
                                                  if r["type"] == "run"))


def history_steps(segment: list[dict]) -> list[int]:
    return [r["history"]["step"]["num"] for r in segment if r["type"] == "history"]


def test_offline_restarts_continue_one_history_without_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    # steps 4-5 redone from the step-3 checkpoint; that start died too: 4-6 redone again
    first, second, third = _starts(run, [(0, 1, 5), (3, 4, 6), (3, 4, 8)])
    assert (first["sent_through"], second["sent_through"], third["sent_through"]) == (0, 5, 6)
    run_id = (run / "wandb_run_id").read_text().strip()
    assert first["run_id"] == second["run_id"] == third["run_id"] == run_id

    segments = wandb_segments(run)
    assert len(segments) == 3
    for seg in segments:
        [record] = [r["run"] for r in seg if r["type"] == "run"]
        assert record["run_id"] == run_id and record["resume"] is True
    assert [history_steps(s) for s in segments] == [[1, 2, 3, 4, 5], [6], [7, 8]]
    rows = [r["history"]["item"] for s in segments for r in s if r["type"] == "history"]
    assert [r["_step"] for r in rows] == [r["train/step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == [10.0 / s for s in range(1, 9)]
    assert [r.get("val_loss") for r in rows] == [None] * 3 + [5.0] + [None] * 3 + [2.5]
    assert all("tokens_per_sec" not in r for r in rows)  # None values are left out

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in lines if "val_loss" in r] == [4, 8]
