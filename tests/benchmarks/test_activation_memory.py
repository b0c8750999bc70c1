"""benchmarks/activation_memory.py end to end on a tiny shape: identical losses under every
policy, each policy holding fewer bytes than none, the chunked loss peaking lower."""

import json

from helpers.dist import run_python


def test_policies_and_loss_kinds():
    proc = run_python(["benchmarks/activation_memory.py", "--config", "gpt-tiny",
                       "--vocab-size", "4096", "--batch", "2", "--seq-len", "64", "--loss-chunk-rows", "16"],
                       timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                            "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["identical_losses"] and len(out["results"]) == 5
    for name, ratio in out["ratios"].items():
        if name != "loss_chunked_vs_plain":
            assert ratio["held_bytes"] < 1.0, name
    assert out["ratios"]["loss_chunked_vs_plain"]["peak_bytes"] < 0.5
