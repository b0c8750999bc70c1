"""benchmarks/model_throughput.py runs end to end on tiny shapes (not a timing test: it checks
that every kind of run builds valid batches, the encoder-decoder one included, and that the
JSON line carries what benchmarks/gpu_check.sh reads)."""

import json

from helpers.dist import run_python


def test_decoder_encdec_policies_and_doc_masking_runs():
    proc = run_python(["benchmarks/model_throughput.py", "--runs", "gpt-tiny:1", "t5-tiny:1",
                       "--seq-len", "32", "--steps", "1", "--warmup", "0", "--ac-modes", "none", "selective",
                       "every-n", "--docs-per-row", "2", "--loss", "chunked"],
                       timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                            "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"] and out["loss"] == "chunked"
    rows = {(r["config"], r.get("activation_checkpointing"), r.get("doc_mask_kernel")): r
            for r in out["results"]}
    assert set(rows) == {("gpt-tiny", None, None), ("t5-tiny", None, None),
                         ("gpt-tiny", "selective", None), ("gpt-tiny", "every-n", None),
                         ("gpt-tiny", None, "dense")}
    assert rows[("t5-tiny", None, None)]["target_len"] == 8  # span corruption of 32 tokens
    assert all(r["tokens_per_sec"] > 0 and r["peak_memory_bytes"] > 0 for r in rows.values())
    for key in ("checkpoint_selective_vs_none", "checkpoint_every_n_memory_vs_none",
                "doc_masking_dense_vs_causal", "doc_masking_vs_causal"):
        assert out["ratios"][key] > 0, key
    assert any("flex" in note for note in out["not_measured"])  # no flex backward on CPU
