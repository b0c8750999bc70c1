"""pretrain/train/parallelize.py: activation checkpointing and compilation applied to the plain
model from outside. Every policy gives the losses and gradients of no checkpointing, bit for bit,
and keeps fewer bytes for backward; names, state-dict keys and generation are unchanged."""

from __future__ import annotations

import pytest
import torch
from helpers.dist import run_ranks
from helpers.models import tiny  # the shipped tiny model configs, vocab 96

from pretrain.configlib import ConfigError
from pretrain.memory import TensorMemory
from pretrain.model import build_model
from pretrain.model.blocks import Block
from pretrain.model.generate import generate
from pretrain.train.config import ActivationCheckpointing, build_run_config
from pretrain.train.parallelize import (
    _matmul_and_attention_ops,
    apply_activation_checkpointing,
    apply_compile,
    parallelize,
)

MODES = ["none", "full", {"every_n": 2}, "selective",
         {"mode": "selective", "selective_mm": "every_second"}]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(cfg, B=2, T=32):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    if cfg.family == "decoder":
        return {"input_ids": ids, "targets": targets}
    return {"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.bool),
            "decoder_input_ids": torch.randint(0, cfg.vocab_size, (B, T), generator=g),
            "targets": targets}


def _model(cfg, mode="none"):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    apply_activation_checkpointing(model, ActivationCheckpointing.model_validate(mode))
    return model


def step(model, batch):
    """One training forward + backward with fixed dropout masks: loss, gradients, bytes held
    for backward after the forward, peak bytes over forward + backward."""
    torch.manual_seed(1)
    with TensorMemory() as mem:
        loss = model(**batch)["loss"]
        held = mem.live_bytes
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.item(), grads, held, mem.peak_bytes


def plain_step(model, batch):
    """step() without the memory count (torch.compile does not trace under a dispatch mode)."""
    torch.manual_seed(1)
    loss = model(**batch)["loss"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["gpt-tiny", "t5-tiny"])
def test_every_policy_gives_identical_gradients_and_holds_less(name):
    update = {"n_layers": 4} if name == "gpt-tiny" else {}
    cfg = tiny(name, dropout=0.1, **update)
    batch = _batch(cfg)
    results = {str(m): step(_model(cfg, m), batch) for m in MODES}
    ref_loss, ref_grads, ref_held, _ = results["none"]
    for mode, (loss, grads, held, _) in results.items():
        assert loss == ref_loss, mode
        for n, g in grads.items():
            assert torch.equal(g, ref_grads[n]), f"{mode}: gradient of {n} differs"
        if mode != "none":
            assert held < ref_held, f"{mode} holds {held} B, no checkpointing {ref_held} B"
    held = {m: r[2] for m, r in results.items()}
    print(f"{name}: bytes held for backward {held}")
    assert held["full"] < held[str({"every_n": 2})]
    every_second = str({"mode": "selective", "selective_mm": "every_second"})
    assert held["full"] < held[every_second] < held["selective"]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_policies_over_flex_document_masking(flex_backward_on_cpu):
    """llama-tiny (GQA, RoPE) with packed documents through flex_attention: the policies give
    the losses and gradients of no checkpointing, and selective keeps flex's output (its
    higher-order op is on the keep list)."""
    cfg = tiny("llama-tiny", doc_masking=True, doc_mask_kernel="flex")
    batch = _batch(cfg, T=64)
    batch["doc_ids"] = torch.tensor([[0] * 20 + [1] * 44, [0] * 64]).int()

    def run(mode):
        model = _model(cfg, mode)
        torch.manual_seed(1)
        loss = model(**batch)["loss"]
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters()}

    want_loss, want_grads = run("none")
    for mode in ("selective", "full"):
        loss, grads = run(mode)
        assert loss == want_loss, mode
        for n, g in grads.items():
            assert torch.equal(g, want_grads[n]), f"{mode}: gradient of {n} differs"
    assert torch.ops.higher_order.flex_attention in _matmul_and_attention_ops()[1]


def test_selective_keeps_matmul_outputs_and_recomputes_pointwise_ops():
    """On 8 blocks of gpt-tiny, T=64: the op-level policy keeps clearly less than no
    checkpointing (it drops norms, GELU and dropout outputs) and more than full."""
    cfg = tiny("gpt-tiny", n_layers=8, dropout=0.0)
    batch = _batch(cfg, T=64)
    held = {m: step(_model(cfg, m), batch)[2] for m in ("none", "selective", "full")}
    print(f"bytes held for backward: {held}")
    assert held["selective"] < 0.8 * held["none"], held
    assert held["none"] >= 4 * held["full"], held


def test_checkpointed_blocks_really_run_twice():
    cfg = tiny("gpt-tiny", n_layers=4)
    model = _model(cfg, {"every_n": 2})
    calls = [0] * 4
    for i, block in enumerate(model.stack.blocks):
        # on the block's first layer, a pre-hook: recomputation stops early, maybe before a
        # forward hook would fire
        block.norm1.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    model(**_batch(cfg))["loss"].backward()
    assert calls == [2, 1, 2, 1]


def test_names_keys_and_generation_unchanged():
    cfg = tiny("gpt-tiny", n_layers=2)
    plain, wrapped = _model(cfg), _model(cfg, "selective")
    assert all(isinstance(b, Block) and type(b).__name__ == "CheckpointedBlock"
               for b in wrapped.stack.blocks)
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 5))
    torch.testing.assert_close(generate(wrapped, idx, 6, temperature=0),
                               generate(plain, idx, 6, temperature=0), rtol=0, atol=0)


def test_compiled_blocks_with_checkpointing_match_eager():
    """Compilation before the engine (torch.compile per block, aot_eager here: the same
    tracing as inductor without code generation) over checkpointed blocks."""
    cfg = tiny("gpt-tiny", n_layers=2)
    batch = _batch(cfg)
    want_loss, want_grads = plain_step(_model(cfg), batch)
    from torch._dynamo.testing import CompileCounterWithBackend

    for scope in ("blocks", "model"):
        torch._dynamo.reset()
        model = _model(cfg, "selective")
        counter = CompileCounterWithBackend("aot_eager")
        apply_compile(model, scope, backend=counter)
        loss, grads = plain_step(model, batch)
        # no graph breaks: one graph for the model; per block, one (reused) or one each
        assert counter.frame_count == 1 if scope == "model" else counter.frame_count <= 2
        assert loss == pytest.approx(want_loss, rel=1e-6), scope
        for n, g in grads.items():
            torch.testing.assert_close(g, want_grads[n], rtol=1e-5, atol=1e-6, msg=n)
    torch._dynamo.reset()


def _run_cfg(**train):
    return build_run_config({
        "run_dir": "runs/x", "data": {"path": "data/x", "seq_len": 32},
        "model": {"family": "decoder", "max_seq_len": 32, "d_model": 32, "n_heads": 4,
                  "n_layers": 3, "vocab_size": 64},
        "train": {"max_steps": 1, "global_batch_size": 2, "micro_batch_size": 2, **train}})


def test_parallelize_places_compile_by_scope():
    blocks = parallelize(build_model(_run_cfg().model), _run_cfg(
        compile=True, compile_scope="blocks", activation_checkpointing="full"))
    assert all(b._compiled_call_impl is not None for b in blocks.stack.blocks)
    whole = parallelize(build_model(_run_cfg().model), _run_cfg(
        compile=True, compile_scope="model", compile_mode="max-autotune-no-cudagraphs"))
    assert hasattr(whole.forward, "_torchdynamo_orig_callable")  # a compiled forward
    assert all(b._compiled_call_impl is None for b in whole.stack.blocks)
    engine = parallelize(build_model(_run_cfg().model), _run_cfg(compile=True))  # scope engine
    assert "forward" not in vars(engine) and engine._compiled_call_impl is None
    torch._dynamo.reset()


def test_config_forms_and_errors():
    ac = _run_cfg(activation_checkpointing={"every_n": 3}).train.activation_checkpointing
    assert (ac.mode, ac.every_n) == ("every_n", 3)
    assert [ac.checkpointed(i) for i in range(4)] == [True, False, False, True]
    assert _run_cfg(activation_checkpointing="full").train.activation_checkpointing.mode == "full"
    assert not _run_cfg().train.activation_checkpointing.checkpointed(0)
    for bad, message in [({"every_n": 0}, "greater than or equal to 1"),
                         ({"mode": "every_n"}, "needs every_n"),
                         ({"mode": "full", "every_n": 2}, "every_n applies to mode every_n"),
                         ({"mode": "full", "selective_mm": "every_second"}, "selective_mm"),
                         ("some", "train.activation_checkpointing.mode")]:
        with pytest.raises(ConfigError, match=message):
            _run_cfg(activation_checkpointing=bad)
    with pytest.raises(ConfigError, match="train.compile_scope"):
        _run_cfg(compile_scope="layers")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_flex_document_masking_is_refused_for_cpu_training():
    cfg = _run_cfg()
    cfg.model.doc_masking, cfg.model.doc_mask_kernel = True, "flex"
    with pytest.raises(ConfigError, match="model.doc_mask_kernel: flex needs a GPU"):
        parallelize(build_model(cfg.model), cfg)


def test_trainer_applies_the_policy_and_matches_the_straight_run(straight_run, runs, tiny_data,
                                                                  tmp_path):
    """The real trainer (2 gloo ranks, ZeRO-0, dropout 0.1) with selective checkpointing: the
    losses of the uninterrupted run without it, bit for bit."""
    run = tmp_path / "run"
    ranks = run_ranks(runs.small_run_args(run, tiny_data, 0,
                                          "train.activation_checkpointing=selective"),
                      tmp_path / "logs")
    assert "activation checkpointing selective (every matmul kept): 2 of 2 blocks" in ranks.logs()
    assert runs.train_losses(run) == runs.train_losses(straight_run(0))
