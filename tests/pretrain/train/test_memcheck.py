"""The run checks the plan: memory_planned_bytes from the start, memory_peak_bytes (the tensor
peak on CPU, highest over ranks) once the first steps are done, and the 20% warning."""

import pytest

from pretrain.train.memcheck import CPU_STEPS, compare


def test_compare_warns_beyond_20_percent():
    assert compare(110, 100) is None and compare(81, 100) is None
    assert "1.30×" in compare(130, 100)
    assert "0.50×" in compare(50, 100)


@pytest.mark.parametrize("stage", [0, 1])
def test_a_real_run_logs_its_peak_next_to_the_plan(straight_run, runs, stage):
    """gpt-tiny on 2 ranks (dropout 0.1: CPU attention runs its math kernel; ZeRO-1's default
    5e8-element reduce bucket is in both figures): within the trainer's own 20%."""
    rows = [r for r in runs.read_metrics(straight_run(stage)) if "loss" in r]
    assert all(r["memory_planned_bytes"] > 0 for r in rows)
    measured = [r for r in rows if "memory_peak_bytes" in r]
    assert measured and measured[0]["step"] == CPU_STEPS
    peak, planned = measured[0]["memory_peak_bytes"], measured[0]["memory_planned_bytes"]
    assert compare(peak, planned) is None, (peak, planned)
