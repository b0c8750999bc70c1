"""Ulysses sequence parallelism (pretrain/train/sequence.py) against one rank per row: the real
trainer on CPU gloo ranks, fp32, dropout 0, plain SGD (tests/helpers/sgd_run.py) without
clipping so a wrong gradient scale shows. Each ZeRO stage runs one model setup: GPT-2-style
(learned positions, 4 heads) and Llama-style (RoPE, 4 query heads over 2 key/value heads),
with and without document masking."""

from __future__ import annotations

import pytest
import torch
from helpers.dist import REPO, run_ranks

from pretrain.configlib import ConfigError
from pretrain.train.config import load_run_config
from pretrain.train.engine import deepspeed_config, grad_accum_steps

SGD = str(REPO / "tests" / "helpers" / "sgd_run.py")
LLAMA = ("model.norm=rmsnorm", "model.position=rope", "model.activation=swiglu",
         "model.n_kv_heads=2", "model.d_ff=176", "model.bias=false",
         "model.tie_embeddings=false")
DOCS = ("model.doc_masking=true",)
# 3 steps of 4 rows x 32 tokens, 2 micro-batches per data-parallel rank: accumulation included.
SHORT = ("data.seq_len=32", "train.max_steps=3", "train.global_batch_size=4",
         "train.micro_batch_size=2", "model.dropout=0.0", "optim.lr=0.1", "optim.grad_clip=0",
         "optim.weight_decay=0", "schedule.name=constant", "schedule.warmup_steps=0",
         "checkpoint.save_at_end=false", "checkpoint.every_steps=1000", "eval.at_end=true",
         "eval.max_samples=8", "eval.every_steps=0", "logging.wandb.mode=disabled",
         "deepspeed.extra.zero_allow_untested_optimizer=true")  # SGD under ZeRO
SETUPS = {0: (), 1: LLAMA + DOCS, 2: DOCS, 3: LLAMA}
REL = 1e-6


def _sgd_run(runs, tiny_data, run_dir, world: int, P: int, stage: int, *extra: str):
    args = runs.train_args("gpt-tiny.yaml", run_dir, tiny_data, *SHORT,
                           f"deepspeed.zero_stage={stage}",
                           f"parallel.sequence_parallel_size={P}", *extra)
    ranks = run_ranks([SGD, *args[2:]], run_dir.parent / f"logs_{run_dir.name}",
                      world_size=world, timeout=400)
    rows = runs.read_metrics(run_dir)
    weights = {n: torch.load(run_dir / f"weights_{n}.pt", weights_only=True)
               for n in ("init", "step1")}
    return rows, weights, ranks


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _compare(got, want, label: str) -> dict[str, float]:
    """Per-step losses and grad norms, the weights after one SGD step and that step's update:
    within REL of the reference. Returns the largest differences (printed for the record)."""
    (all_rows, w, _), (all_ref, ref_w, _) = got, want
    val_rel = _relative(*(next(r["val_loss"] for r in x if "val_loss" in r)
                          for x in (all_rows, all_ref)))
    assert val_rel <= REL, "val_loss at the end"
    rows, ref_rows = ([r for r in x if "loss" in r] for x in (all_rows, all_ref))
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == [1, 2, 3]
    loss_rel = max(_relative(a["loss"], b["loss"]) for a, b in zip(rows, ref_rows))
    assert loss_rel <= REL, [(a["loss"], b["loss"]) for a, b in zip(rows, ref_rows)]
    norms = [(a["grad_norm"], b["grad_norm"]) for a, b in zip(rows, ref_rows)
             if b["grad_norm"] is not None]
    norm_rel = max((_relative(a, b) for a, b in norms), default=0.0)
    assert norm_rel <= REL, norms
    for name, ref in ref_w["step1"].items():
        torch.testing.assert_close(w["step1"][name], ref, rtol=REL, atol=REL * ref.abs().max())
    assert all(torch.equal(w["init"][k], ref_w["init"][k]) for k in ref_w["init"])
    update = torch.cat([(w["step1"][k] - w["init"][k]).flatten() for k in ref_w["init"]])
    ref_update = torch.cat([(ref_w["step1"][k] - ref_w["init"][k]).flatten()
                            for k in ref_w["init"]])
    update_rel = float((update - ref_update).norm() / ref_update.norm())
    assert update_rel <= 1e-4, f"{label}: the SGD update differs by {update_rel:.2e} (x" \
        f"{float(update.norm() / ref_update.norm()):.3f})"
    figures = {"loss_rel": loss_rel, "val_loss_rel": val_rel, "grad_norm_rel": norm_rel, "update_rel": update_rel}
    print(f"{label}: " + " ".join(f"{k} {v:.2e}" for k, v in figures.items()))
    return figures


def test_preflight_names_every_key_that_does_not_divide():
    overrides = ["parallel.sequence_parallel_size=3", "model.n_kv_heads=2", "train.compile=true"]
    with pytest.raises(ConfigError) as err:
        load_run_config(REPO / "configs" / "gpt-tiny.yaml", overrides, world_size=4)
    text = str(err.value)
    for needle in ("the world size (4 ranks) is not divisible by it",
                   "model.n_heads (4) is not divisible by it",
                   "model.n_kv_heads (2) is not divisible by it",
                   "data.seq_len (64) is not divisible by it",
                   "train.compile with parallel.sequence_parallel_size 3"):
        assert needle in text, text


def test_preflight_refuses_encoder_decoders():
    with pytest.raises(ConfigError) as err:
        load_run_config(REPO / "configs" / "t5-tiny.yaml", ["parallel.sequence_parallel_size=2"],
                        world_size=2)
    assert "sequence parallelism is for decoders" in str(err.value)


def test_batches_divide_over_data_parallel_ranks():
    """8 rows, micro-batch 2: 4 ranks at P=2 are 2 data-parallel ranks, 2 micro-batches each;
    DeepSpeed, seeing 4 data-parallel ranks, is told 16 'samples' (row pieces) per step."""
    cfg = load_run_config(REPO / "configs" / "gpt-tiny.yaml",
                          ["parallel.sequence_parallel_size=2"], world_size=4)
    assert grad_accum_steps(cfg, 4) == 2
    ds = deepspeed_config(cfg, 4)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert "sequence_parallel_size" not in ds  # DeepSpeed is not told (sequence.py)
    with pytest.raises(ConfigError, match=r"micro_batch_size × ranks \(2 × 3\)"):
        load_run_config(REPO / "configs" / "gpt-tiny.yaml",
                        ["parallel.sequence_parallel_size=2"], world_size=6)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_ranks_one_row_match_one_rank(stage, tiny_data, runs, tmp_path):
    """2 ranks at P=2 (one data-parallel rank) against 1 rank at P=1 on the same rows."""
    extra = SETUPS[stage]
    ref = _sgd_run(runs, tiny_data, tmp_path / "one", 1, 1, stage, *extra)
    got = _sgd_run(runs, tiny_data, tmp_path / "sp2", 2, 2, stage, *extra)
    logs = got[2].logs(tail=10_000)
    assert "sequence parallelism: 2 attention layers over 2 ranks per row" in logs, logs
    _compare(got, ref, f"ZeRO-{stage} {'llama GQA' if LLAMA[0] in extra else 'gpt2'}"
             f"{' doc-masked' if DOCS[0] in extra else ''}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_sequence_and_data_parallel_match_data_parallel(stage, tiny_data, runs, tmp_path):
    """4 ranks (P=2 x 2 data-parallel) against 2 ranks (data-parallel only)."""
    extra = LLAMA + DOCS
    ref = _sgd_run(runs, tiny_data, tmp_path / "dp2", 2, 1, stage, *extra)
    got = _sgd_run(runs, tiny_data, tmp_path / "sp2dp2", 4, 2, stage, *extra)
    _compare(got, ref, f"ZeRO-{stage} P=2 x DP=2")


def test_stop_at_two_resume_at_one_and_back(tiny_data, runs, tmp_path):
    """AdamW, ZeRO-0, Llama GQA with document masking: steps 1-2 on 2 ranks at P=2, 3-4 on 1
    rank at P=1, 5-6 on 2 ranks at P=2 again, against 6 uninterrupted steps on 1 rank. The
    checkpoint is that of a 2- or 1-rank data-parallel run; the data position carries over."""
    common = (*SHORT[:1], *SHORT[2:], *LLAMA, *DOCS, "train.max_steps=6", "optim.lr=3e-3",
              "deepspeed.zero_stage=0", "eval.at_end=false")
    ref_dir, run = tmp_path / "ref", tmp_path / "run"
    run_ranks(runs.train_args("gpt-tiny.yaml", ref_dir, tiny_data, *common), tmp_path / "l0",
              world_size=1, timeout=400)
    legs = [(2, 2, "train.stop_at_step=2", 75), (1, 1, "train.stop_at_step=4", 75),
            (2, 2, "train.stop_at_step=6", 0)]
    for i, (world, P, stop, code) in enumerate(legs):
        ranks = run_ranks(runs.train_args("gpt-tiny.yaml", run, tiny_data, *common, stop,
                                          f"parallel.sequence_parallel_size={P}"),
                          tmp_path / f"l{i + 1}", world_size=world, expect=code, timeout=400)
        if i:
            assert f"at step {2 * i}" in ranks.logs(tail=10_000)
    got, want = runs.train_losses(run), runs.train_losses(ref_dir)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 7))
    worst = max(_relative(a, b) for (_, a), (_, b) in zip(got, want))
    print(f"stop/resume P=2 -> P=1 -> P=2: largest loss difference {worst:.2e}")
    assert worst <= REL, list(zip(got, want))


def test_plan_counts_sequence_parallelism():
    """P=2 on 8 GPUs: activations per GPU halve (the dense document mask excepted), model
    states stay, and the global batch is spread over 4 data-parallel ranks."""
    from pretrain.train.plan import grad_accum, memory_peak

    path = REPO / "configs" / "long-context.yaml"
    cfgs = {P: load_run_config(path, ["data.seq_len=8192", "model.max_seq_len=8192",
                                      f"parallel.sequence_parallel_size={P}"], world_size=8)
            for P in (1, 2)}
    one, two = (memory_peak(cfgs[P], 8) for P in (1, 2))
    assert two.activations / one.activations == pytest.approx(0.5, rel=0.01)
    assert (two.parameters, two.optimizer_states) == (one.parameters, one.optimizer_states)
    assert grad_accum(cfgs[1], 8, 1) == 2 and grad_accum(cfgs[2], 8, 1) == 4
