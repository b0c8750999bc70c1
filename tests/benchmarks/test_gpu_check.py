"""benchmarks/gpu_check.sh without a GPU: its control flow (budget skips, the summary, at most
5 files under $OUT) in seconds, and the summary table from every kind of step result. The
full dry run (`DRY=1 bash benchmarks/gpu_check.sh`, every step on CPU, ~6 min on 2 busy
cores) is run by hand; docs/performance.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers.dist import REPO


def test_script_parses_and_skips_what_does_not_fit_the_budget(tmp_path):
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks/gpu_check.sh")]).returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "DRY": "1", "PYTHON": sys.executable, "OUT": str(out),
           "BUDGET_S": "1", "ONLY": "train_gpt2_124m_levers model_ac_docmask"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log"]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] is True
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("train_gpt2_124m_levers", "skipped (budget)"), ("model_ac_docmask", "skipped (budget)")]
    assert "gpu_check summary (DRY RUN" in proc.stdout
    assert "skip train_gpt2_124m_levers: needs ~150s" in (out / "gpu_check.log").read_text()


def test_summary_table_from_each_kind_of_result(tmp_path):
    train = {"benchmark": "train_throughput", "device": "NVIDIA H100 80GB HBM3", "model": "m",
             "batch": 32, "seq_len": 1024,
             "config": {"precision": "bf16_autocast", "zero_stage": 2, "compile": True},
             "ours": {"tokens_per_sec": 400000, "mfu": 0.35},
             "plain": {"tokens_per_sec": 420000, "mfu": 0.37}, "ratio_vs_plain": 0.952,
             "levers": [{"lever": "bf16", "tokens_per_sec": 380000, "mfu": 0.33,
                         "ratio_vs_plain": 0.905},
                        {"lever": "x", "error": "- train.compile_scope: unknown key"}]}
    model = {"results": [{"config": "llama-1.1b", "batch": 8, "seq_len": 2048,
                          "tokens_per_sec": 60000, "mfu": 0.47, "flops_per_token": 1,
                          "step_time_ms": 1.0, "activation_checkpointing": "full"}],
             "ratios": {"checkpoint_full_vs_none": 0.8}}
    shard = {"workers": 16, "corpus_mb": 200.1, "cores": 16, "tokens_per_sec": 4000000,
             "speedup_vs_1_worker": 11.2}
    steps = [{"step": "a", "status": "ok", "seconds": 9, "result": train},
             {"step": "b", "status": "timeout after 9s", "seconds": 9, "result": model},
             {"step": "c", "status": "ok", "seconds": 9, "result": shard},
             {"step": "d", "status": "failed (exit 1)", "seconds": 1, "result": None}]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(s) + "\n" for s in steps))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check_summary.py"),
                           str(results), str(tmp_path / "s.json"), "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "device: NVIDIA H100 80GB HBM3" in text
    assert "m b32x1024 bf16_autocast ZeRO-2 compile" in text and "0.952" in text
    assert "35.0%" in text and "420,000" in text and "0.905" in text
    assert "not run: - train.compile_scope: unknown key" in text
    assert "timeout after 9s (partial)" in text and "activation_checkpointing=full" in text
    assert "11.2x vs 1 worker" in text and "failed (exit 1)" in text
    assert json.loads((tmp_path / "s.json").read_text())["steps"] == steps
