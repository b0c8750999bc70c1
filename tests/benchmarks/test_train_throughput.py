"""benchmarks/train_throughput.py runs end to end on a tiny setting (not a timing test: it checks
that the real trainer path and the plain loop both run and that the JSON line carries what
benchmarks/gpu_check.sh and docs/performance.md read). A merge once left the script importing a
function that had moved; this test is what catches that."""

import json

from helpers.dist import run_python


def test_ours_and_plain_both_run_and_the_json_line_has_the_ratio():
    proc = run_python(["benchmarks/train_throughput.py", "--model", "gpt-tiny", "--batch", "2",
                       "--seq-len", "32", "--steps", "2", "--rounds", "1", "--warmup", "1",
                       "--zero-stage", "1", "--precision", "fp32"],
                       timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                            "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "train_throughput" and out["gpu"] is None
    assert out["config"]["zero_stage"] == 1 and out["config"]["precision"] == "fp32"
    assert out["ours"]["tokens_per_sec"] > 0 and out["plain"]["tokens_per_sec"] > 0
    assert out["ratio_vs_plain"] > 0
    assert out["tokens_per_step"] == 2 * 32
