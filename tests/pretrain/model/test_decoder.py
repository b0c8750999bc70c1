"""Decoder-only models (GPT-2 and Llama styles): causality, document masking, generation."""

import pytest
import torch

from pretrain.model import build_model
from pretrain.model.generate import generate

STYLES = ["gpt-tiny", "llama-tiny"]
# flex_attention without torch.compile (CPU): the reference path, expected here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.mark.parametrize("name", STYLES)
def test_changing_token_t_never_changes_earlier_logits(tiny_cfg, name):
    model = build_model(tiny_cfg(name)).eval()
    ids = torch.randint(0, 96, (2, 20))
    t = 11
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 1) % 96
    before, after = model(ids)["logits"], model(changed)["logits"]  # (B, T, V)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 1e-6  # later ones do change


def _packed(lengths, vocab=96):
    docs = [torch.randint(0, vocab, (n,)) for n in lengths]
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    return docs, torch.cat(docs)[None], doc_ids[None].int()  # (1, T) each


@pytest.mark.parametrize("kernel", ["dense", "flex"])
@pytest.mark.parametrize("name", STYLES)
def test_document_masking_isolates_documents_exactly(tiny_cfg, name, kernel):
    cfg = tiny_cfg(name, doc_masking=True, doc_mask_kernel=kernel, dropout=0.0)
    model = build_model(cfg).eval().requires_grad_(False)  # flex: no backward on CPU (below)
    docs, ids, doc_ids = _packed([7, 13, 5])
    packed = model(ids, doc_ids=doc_ids)["logits"][0]  # (T, V)
    start = 0
    for doc in docs:
        alone = model(doc[None])["logits"][0]
        torch.testing.assert_close(packed[start:start + len(doc)], alone, rtol=1e-5, atol=1e-5)
        start += len(doc)


@pytest.mark.parametrize("name", STYLES)  # llama-tiny: GQA (4 heads, 2 KV) and RoPE
def test_flex_block_mask_equals_dense_mask_with_gradients(tiny_cfg, name, flex_backward_on_cpu):
    """Multi-document rows (positions restart per document): the flex BlockMask path gives the
    loss, logits and every gradient of the dense boolean mask, within float32 tolerance."""
    lengths = [[40, 70, 18], [128], [1, 60, 3, 64]]  # rows of 128 tokens
    doc_ids = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(row)])
                           for row in lengths]).int()  # (3, 128)
    ids = torch.randint(0, 96, (3, 128))
    targets = torch.randint(0, 96, (3, 128))
    results = {}
    for kernel in ("dense", "flex"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(name, doc_masking=True, doc_mask_kernel=kernel,
                                     dropout=0.0, max_seq_len=128)).train()
        out = model(ids, targets=targets, doc_ids=doc_ids)
        out["loss"].backward()
        with torch.no_grad():
            logits = model.eval()(ids, doc_ids=doc_ids)["logits"]
        results[kernel] = (out["loss"], logits, {n: p.grad for n, p in model.named_parameters()})
    (loss_d, logits_d, grads_d), (loss_f, logits_f, grads_f) = results["dense"], results["flex"]
    torch.testing.assert_close(loss_f, loss_d, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits_f, logits_d, rtol=1e-5, atol=1e-5)
    for n, g in grads_d.items():
        torch.testing.assert_close(grads_f[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_flex_model_compiles_to_one_graph_and_matches_dense(tiny_cfg, flex_backward_on_cpu):
    """The whole forward with the flex path — BlockMask built from doc_ids, flex_attention in
    every layer, the loss — traced by torch.compile into one graph without breaks (aot_eager:
    inductor's tracing without code generation), and its loss and gradients equal the dense
    mask's."""
    cfg = tiny_cfg("llama-tiny", doc_masking=True, dropout=0.0, max_seq_len=128, n_layers=1)
    ids = torch.randint(0, 96, (2, 128))
    doc_ids = torch.tensor([[0] * 50 + [1] * 78, [0] * 128]).int()
    results = {}
    for kernel in ("dense", "flex"):
        torch.manual_seed(0)
        model = build_model(cfg.model_copy(update={"doc_mask_kernel": kernel}))
        if kernel == "flex":
            from torch._dynamo.testing import CompileCounterWithBackend

            torch._dynamo.reset()
            counter = CompileCounterWithBackend("aot_eager")
            model.forward = torch.compile(model.forward, backend=counter)
        loss = model(ids, targets=ids, doc_ids=doc_ids)["loss"]
        loss.backward()
        results[kernel] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch._dynamo.reset()
    assert counter.frame_count == 1  # one graph: no graph break anywhere in the forward
    torch.testing.assert_close(results["flex"][0], results["dense"][0])
    for n, g in results["dense"][1].items():
        torch.testing.assert_close(results["flex"][1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_block_mask_skips_tiles_of_other_documents():
    from pretrain.model.layers import doc_block_mask

    doc_ids = torch.tensor([[0] * 128 + [1] * 128, [0] * 256]).int()
    mask = doc_block_mask(doc_ids)  # 128 x 128 tiles: 2 x 2 per row
    tiles = mask.kv_num_blocks + mask.full_kv_num_blocks  # partly + fully visible kv tiles
    # row 0: the second query tile sees only its own kv tile; row 1 (one document): both
    assert tiles[0, 0].tolist() == [1, 1]
    assert tiles[1, 0].tolist() == [1, 2]
    assert mask.full_kv_num_blocks[1, 0].tolist() == [0, 1]  # kv tile 0, all below the diagonal


def test_doc_mask_kernel_choice_and_checks(tiny_cfg):
    from pretrain.configlib import ConfigError

    cfg = tiny_cfg("llama-tiny", doc_masking=True)  # auto
    assert (cfg.doc_kernel("cuda"), cfg.doc_kernel("cpu")) == ("flex", "dense")
    with_dropout = tiny_cfg("gpt-tiny", doc_masking=True)  # dropout 0.1: flex has none
    assert with_dropout.doc_kernel("cuda") == "dense"
    with pytest.raises(ConfigError, match="doc_mask_kernel.*no attention dropout"):
        tiny_cfg("gpt-tiny", doc_masking=True, doc_mask_kernel="flex")


def test_without_doc_masking_documents_see_each_other(tiny_cfg):
    """The control for the test above: doc_ids are ignored when doc_masking is off."""
    model = build_model(tiny_cfg("gpt-tiny")).eval()
    docs, ids, doc_ids = _packed([7, 13, 5])
    packed = model(ids, doc_ids=doc_ids)["logits"][0]
    alone = model(docs[1][None])["logits"][0]
    assert not torch.allclose(packed[7:20], alone, atol=1e-3)


def test_loss_is_mean_cross_entropy_ignoring_minus_100(tiny_cfg):
    model = build_model(tiny_cfg("llama-tiny")).eval()
    ids = torch.randint(0, 96, (2, 10))
    targets = torch.randint(0, 96, (2, 10))
    targets[:, 6:] = -100
    out = model(ids, targets=targets)
    logits = out["logits"][:, :6].reshape(-1, 96)
    want = torch.nn.functional.cross_entropy(logits, targets[:, :6].reshape(-1))
    torch.testing.assert_close(out["loss"], want)
    assert set(model(ids)) == {"logits"}


def _greedy_without_cache(model, idx, n):
    for _ in range(n):
        nxt = model(idx[:, -model.cfg.max_seq_len:])["logits"][:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@pytest.mark.parametrize("name", STYLES)
def test_kv_cache_generation_equals_full_recompute(tiny_cfg, name):
    model = build_model(tiny_cfg(name, max_seq_len=24)).eval()
    prompt = torch.randint(0, 96, (2, 5))
    # 30 new tokens run past max_seq_len=24, so the sliding-window path is covered too
    got = generate(model, prompt, 30, temperature=0)
    assert got.shape == (2, 35)
    assert torch.equal(got, _greedy_without_cache(model, prompt, 30))
    assert torch.equal(generate(model, prompt, 30, temperature=1.0, top_k=1), got)


def test_generation_stops_at_eos_and_pads_finished_rows(tiny_cfg):
    model = build_model(tiny_cfg("gpt-tiny")).eval()
    prompt = torch.randint(0, 96, (3, 4))
    free = generate(model, prompt, 12, temperature=0)
    eos = int(free[0, 6])  # row 0 emits this token at its 3rd generated step
    out = generate(model, prompt, 12, temperature=0, eos_id=eos)
    first_eos = [(row[4:] == eos).nonzero()[0].item() if (row[4:] == eos).any() else None
                 for row in out]
    assert first_eos[0] is not None and first_eos[0] <= 2
    for row, i in zip(out, first_eos):
        if i is not None:
            assert (row[4 + i:] == eos).all()
    assert out.shape[1] <= free.shape[1]
    assert model.training is False


def test_sequences_longer_than_context_are_refused(tiny_cfg):
    model = build_model(tiny_cfg("gpt-tiny"))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
