"""Decoder-only models (GPT-2 and Llama styles): causality, document masking, generation."""

import pytest
import torch

from pretrain.model import build_model, generate

STYLES = ["gpt-tiny", "llama-tiny"]


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


@pytest.mark.parametrize("name", STYLES)
def test_document_masking_isolates_documents_exactly(tiny_cfg, name):
    model = build_model(tiny_cfg(name, doc_masking=True)).eval()
    docs, ids, doc_ids = _packed([7, 13, 5])
    packed = model(ids, doc_ids=doc_ids)["logits"][0]  # (T, V)
    start = 0
    for doc in docs:
        alone = model(doc[None])["logits"][0]
        torch.testing.assert_close(packed[start:start + len(doc)], alone, rtol=1e-5, atol=1e-5)
        start += len(doc)


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
