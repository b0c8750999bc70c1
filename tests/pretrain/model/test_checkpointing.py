"""Activation checkpointing: identical gradients in every mode, and far fewer saved bytes."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from pretrain.model import build_model

MODES = ["none", "full", "selective", {"every_n": 2}]


def _batch(cfg, B=2, T=32):
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))
    if cfg.family == "decoder":
        return {"input_ids": ids, "targets": targets}
    return {"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.bool),
            "decoder_input_ids": torch.randint(0, cfg.vocab_size, (B, T)), "targets": targets}


def loss_grads_and_saved_bytes(cfg, batch):
    """One training-mode step from a fixed init and RNG: loss, gradients, and the bytes of the
    distinct non-parameter tensors autograd keeps for backward outside checkpointed regions."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    torch.manual_seed(1)  # same dropout masks for every mode
    with saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.item(), grads, sum(saved.values())


@pytest.mark.parametrize("name", ["gpt-tiny", "t5-tiny"])
def test_gradients_identical_in_every_mode(tiny_cfg, name):
    results, batch = {}, _batch(tiny_cfg(name))
    for mode in MODES:
        cfg = tiny_cfg(name, dropout=0.1, activation_checkpointing=mode)
        if cfg.family == "decoder":
            cfg = cfg.model_copy(update={"n_layers": 4})
        results[str(mode)] = loss_grads_and_saved_bytes(cfg, batch)
    ref_loss, ref_grads, ref_bytes = results["none"]
    for mode, (loss, grads, n_bytes) in results.items():
        assert loss == ref_loss, mode
        for n, g in grads.items():
            assert torch.equal(g, ref_grads[n]), f"{mode}: gradient of {n} differs"
        if mode != "none":
            assert n_bytes < ref_bytes, f"{mode} saves {n_bytes} B, no checkpointing {ref_bytes} B"


def test_full_checkpointing_cuts_saved_bytes_4x_on_8_layers(tiny_cfg):
    cfg = tiny_cfg("gpt-tiny", n_layers=8, dropout=0.0)
    batch = _batch(cfg, B=2, T=64)
    _, _, plain = loss_grads_and_saved_bytes(cfg, batch)
    _, _, full = loss_grads_and_saved_bytes(
        cfg.model_copy(update={"activation_checkpointing": "full"}), batch)
    print(f"saved for backward: none {plain} B, full {full} B, {plain / full:.1f}x less")
    assert plain >= 4 * full, (plain, full)


def test_checkpointed_blocks_really_run_twice(tiny_cfg):
    cfg = tiny_cfg("gpt-tiny", n_layers=4, activation_checkpointing={"every_n": 2})
    model = build_model(cfg).train()
    calls = [0] * 4
    for i, block in enumerate(model.stack.blocks):
        # a pre-hook: recomputation stops early, before a forward hook would fire
        block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    model(**_batch(cfg))["loss"].backward()
    assert calls == [2, 1, 2, 1]
