"""bf16 and the Llama-style decoder through the trainer: a run stopped at a step boundary and
resumed gives the losses of the uninterrupted run bit for bit (torch AdamW, per-rank RNG)."""

from __future__ import annotations

from helpers.dist import run_ranks

# gpt-tiny's run, switched to the Llama style (RMSNorm, RoPE, SwiGLU, GQA, untied, no biases).
LLAMA = ("model.norm=rmsnorm", "model.position=rope", "model.activation=swiglu",
         "model.bias=false", "model.tie_embeddings=false", "model.n_kv_heads=2", "model.d_ff=176")


def test_bf16_llama_stop_and_resume_is_bitwise_exact(tiny_data, runs, tmp_path):
    args = (*LLAMA, "precision=bf16", "deepspeed.zero_stage=2", "checkpoint.every_steps=100")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_ranks(runs.small_run_args(straight, tiny_data, 2, *args), tmp_path / "logs_a")
    run_ranks(runs.small_run_args(resumed, tiny_data, 2, *args, "train.stop_at_step=4"),
              tmp_path / "logs_b", expect=75)
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    third = run_ranks(runs.small_run_args(resumed, tiny_data, 2, *args), tmp_path / "logs_c")
    assert "at step 4" in third.logs(tail=10_000), third.logs()  # really resumed, not restarted

    want, got = runs.train_losses(straight), runs.train_losses(resumed)
    assert [s for s, _ in want] == list(range(1, 9)), want
    assert got == want  # same steps, same losses, bit for bit
    assert want[-1][1] < want[0][1], want
