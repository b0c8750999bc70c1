"""benchmarks/sequence_memory.py end to end on a tiny shape (2 CPU gloo ranks): at P=2 each rank
holds at most 0.6x the activations of one rank on the whole row, and the losses agree."""

import json

from helpers.dist import run_python


def test_two_ranks_hold_about_half():
    proc = run_python(["benchmarks/sequence_memory.py", "--config", "llama-tiny",
                       "--seq-len", "256", "--doc-masking"],
                       timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["losses_agree"] and out["P"] == 2 and len(out["ranks"]) == 2
    assert out["ratios"]["held_bytes"] <= 0.6, out["ratios"]
    assert "no GPU" in proc.stdout
