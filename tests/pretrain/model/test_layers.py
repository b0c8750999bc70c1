"""Attention against a naive float64 reference, RoPE's relative property, document positions."""

import math

import pytest
import torch

from pretrain.model.layers import (
    Attention,
    apply_rope,
    doc_causal_mask,
    positions_from_doc_ids,
    rope_angles,
)


def naive_attention(x, attn: Attention, mask):
    """softmax(Q K^T / sqrt(hd) + mask) V with explicit loops over nothing clever, float64."""
    B, T, C = x.shape
    h, kv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(B, T, h, hd).transpose(1, 2)
    k, v = (x @ attn.kv_proj.weight.T + attn.kv_proj.bias).split(kv * hd, dim=-1)
    k = k.view(B, T, kv, hd).transpose(1, 2).repeat_interleave(h // kv, dim=1)
    v = v.view(B, T, kv, hd).transpose(1, 2).repeat_interleave(h // kv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, h, T, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, h, T, hd)
    return y.transpose(1, 2).reshape(B, T, C) @ attn.out_proj.weight.T + attn.out_proj.bias


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("masking", ["causal", "docs", "full"])
def test_sdpa_matches_naive_float64(n_kv_heads, masking):
    attn = Attention(32, 4, n_kv_heads, bias=True, dropout=0.0).double().eval()
    for p in attn.parameters():  # non-zero biases too
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    doc_ids = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    if masking == "causal":
        got, mask = attn(x, causal=True), causal[None, None]
    elif masking == "docs":
        mask = doc_causal_mask(doc_ids)
        got = attn(x, mask=mask)
    else:
        got, mask = attn(x), torch.ones(1, 1, 12, 12, dtype=torch.bool)
    want = naive_attention(x, attn, mask)
    rel = (got - want).norm() / want.norm()
    assert rel < 1e-6, f"relative error {rel:.2e}"


@pytest.mark.parametrize("masking", ["causal", "docs"])
def test_gqa_in_the_kernel_equals_repeated_heads_with_gradients(masking, monkeypatch):
    """enable_gqa (K/V heads shared inside SDPA) against the former path that repeated K and V
    to every query head before SDPA: same outputs and gradients in float32."""
    import torch.nn.functional as F

    attn = Attention(32, 8, 2, bias=False, dropout=0.0)
    x = torch.randn(2, 12, 32)
    doc_ids = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])
    kw = {"causal": True} if masking == "causal" else {"mask": doc_causal_mask(doc_ids)}

    def run():
        xg = x.clone().requires_grad_()
        attn.zero_grad()
        y = attn(xg, **kw)
        y.square().sum().backward()
        return y.detach(), xg.grad, attn.kv_proj.weight.grad.clone()

    got = run()
    sdpa = F.scaled_dot_product_attention

    def repeated(q, k, v, *args, enable_gqa=False, **kwargs):
        assert enable_gqa  # the model asks the kernel to share heads
        rep = q.shape[1] // k.shape[1]
        return sdpa(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", repeated)
    want = run()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    hd = 16
    q, k = torch.randn(1, 1, 1, hd, dtype=torch.float64), torch.randn(1, 1, 1, hd, dtype=torch.float64)

    def score(m, n):
        def rot(x, p):
            a = rope_angles(torch.tensor([p]), hd, 10000.0).double()[None, None]  # (1,1,1,hd/2)
            return apply_rope(x, a.cos(), a.sin())
        return (rot(q, m) * rot(k, n)).sum().item()

    base = score(7, 3)
    for shift in (1, 5, 40, 500):
        assert score(7 + shift, 3 + shift) == pytest.approx(base, rel=1e-5)  # float32 angles
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)  # and it does depend on m - n


def test_positions_restart_per_document_and_mask_is_block_causal():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    assert positions_from_doc_ids(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    mask = doc_causal_mask(doc_ids)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False]
    assert mask[2].tolist() == [True, True, True, False, False, False]
    assert mask[5].tolist() == [False] * 5 + [True]


def test_scaled_init_of_residual_projections():
    from pretrain.model import ModelConfig, build_model

    cfg = ModelConfig(family="decoder", vocab_size=512, max_seq_len=16, d_model=256, n_heads=4,
                      n_layers=8)
    model = build_model(cfg)
    block = model.stack.blocks[0]
    for w in (block.self_attn.out_proj.weight, block.ffn.down.weight):
        assert w.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    for w in (block.self_attn.q_proj.weight, block.ffn.up.weight, model.tok_emb.weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.05)
    xavier = build_model(cfg.model_copy(update={"init": "xavier"}))
    w = xavier.stack.blocks[0].ffn.up.weight  # (d_ff, d): bound sqrt(6 / (d + d_ff))
    assert w.abs().max().item() <= math.sqrt(6 / (256 + 1024))
    assert w.std().item() == pytest.approx(math.sqrt(2 / (256 + 1024)), rel=0.05)


def _t5_reference(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's `_relative_position_bucket` as published (Hugging Face transformers,
    modeling_t5.py, Apache-2.0), line for line."""
    import math
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    return relative_buckets + torch.where(is_small, relative_position, relative_position_if_large)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets, distance", [(32, 128), (8, 20)])
def test_t5_relative_buckets_match_t5(bidirectional, buckets, distance):
    from pretrain.model.layers import relative_buckets
    rel = torch.arange(-600, 601)
    assert torch.equal(relative_buckets(rel, bidirectional, buckets, distance),
                       _t5_reference(rel, bidirectional, buckets, distance))
    few = torch.tensor([0, -1, 1, -8, 8, -15, -16, -40, -500, 500])
    want = [0, 1, 17, 8, 24, 9, 10, 12, 15, 31] if bidirectional else \
        [0, 1, 0, 8, 0, 15, 16, 23, 31, 0]
    if (buckets, distance) == (32, 128):
        assert relative_buckets(few, bidirectional, 32, 128).tolist() == want
