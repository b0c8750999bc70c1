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


def test_the_second_step_already_holds_the_runs_peak():
    """CPU_STEPS: step 1 creates AdamW's states, step 2 is the first whole step with them;
    counting on to step 5 finds no higher peak (gpt-tiny, 2 micro-batches per step)."""
    import torch

    from pretrain.model import build_model
    from pretrain.model.config import ModelConfig
    from pretrain.train.memcheck import PeakMemory

    def peak(steps: int) -> int:
        torch.manual_seed(0)
        tracker = PeakMemory(torch.device("cpu"), cpu_steps=steps)
        tracker.start()
        model = build_model(ModelConfig(family="decoder", d_model=32, n_layers=2, n_heads=2, vocab_size=64,
                                        max_seq_len=16))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, 64, (2, 16))
        while not tracker.ready:
            for _ in range(2):
                model(x, targets=x)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tracker.step_done()
        return tracker.local_peak()

    assert CPU_STEPS == 2
    assert peak(1) < peak(CPU_STEPS) == peak(5)
