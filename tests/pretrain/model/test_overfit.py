"""Each family (and each shipped tiny style) memorises a fixed tiny batch in seconds on CPU."""

import pytest
import torch

from pretrain.model import build_model


def _fixed_batch(cfg, B=4, T=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    if cfg.family == "decoder":
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
    targets = torch.randint(0, cfg.vocab_size, (B, T // 2), generator=g)
    return {"input_ids": ids[:, :-1], "attention_mask": torch.ones(B, T, dtype=torch.bool),
            "decoder_input_ids": torch.cat([torch.ones(B, 1, dtype=torch.long), targets[:, :-1]], 1),
            "targets": targets}


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "t5-tiny", "transformer-tiny"])
def test_overfits_a_fixed_batch(tiny_cfg, name):
    # no dropout / label smoothing: with smoothing 0.1 the loss cannot reach 0.1 at all
    cfg = tiny_cfg(name, dropout=0.0, label_smoothing=0.0)
    model = build_model(cfg).train()
    batch = _fixed_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = model(**batch)["loss"]
        losses.append(loss.item())
        if losses[-1] < 0.1:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.4f} in {len(losses) - 1} steps")
    assert losses[-1] < 0.1
