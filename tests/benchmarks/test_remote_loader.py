"""benchmarks/remote_loader.py runs end to end on a tiny setting against the session's Ceph RGW
(not a timing test: it checks the script runs and its JSON line carries every ratio)."""

import json
import os

import pytest
from helpers.dist import run_python


@pytest.mark.slow
def test_runs_and_reports_every_ratio(s3):
    proc = run_python(["benchmarks/remote_loader.py", "--shards", "3", "--shard-mb", "0.5",
                       "--seq-len", "64", "--micro-batch", "4", "--seconds", "0.6", "--train-steps", "2",
                       "--bucket", s3.name], timeout=300,
                       env={**os.environ, **s3.env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("warm_over_local", "cold_over_local", "bounded_over_local", "data_wait_share",
                "first_batch_over_floor", "first_batch_over_its_shards"):
        assert out[key] > 0, key
