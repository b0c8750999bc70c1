"""The loss: chunked linear + cross-entropy equals the plain one (values and gradients, label
smoothing, ignored targets, under autocast and compile) while never holding the full logits;
the models return the loss alone from a training forward."""

import pytest
import torch

from pretrain.memory import TensorMemory
from pretrain.model import build_model
from pretrain.model.loss import IGNORE, chunked_linear_cross_entropy, cross_entropy


def _inputs(N=50, C=16, V=96, ignored=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.randperm(N, generator=g)[:ignored]] = IGNORE
    return hidden, weight, targets


def _plain(hidden, weight, targets, smoothing):
    logits = (hidden @ weight.t())[None]  # (1, N, V)
    return cross_entropy(logits, targets[None], smoothing)


def _loss_and_grads(fn, hidden, weight, targets, smoothing, **kw):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, smoothing, **kw)
    (loss * 3.0).backward()  # a non-unit upstream gradient
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1, 7, 16, 1000])
def test_chunked_equals_plain(smoothing, chunk_rows):
    hidden, weight, targets = _inputs()
    want = _loss_and_grads(_plain, hidden, weight, targets, smoothing)
    got = _loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, smoothing,
                          chunk_rows=chunk_rows)
    for g, w, what in zip(got, want, ["loss", "d hidden", "d weight"]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=what)
    assert (got[1][targets == IGNORE] == 0).all()  # ignored rows get no gradient


def test_chunked_under_bf16_autocast_and_without_grad():
    hidden, weight, targets = _inputs(N=64, C=32, V=128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _loss_and_grads(_plain, hidden, weight, targets, 0.1)
        got = _loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, 0.1,
                              chunk_rows=16)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3)
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(hidden, weight, targets, 0.1, chunk_rows=16)
    torch.testing.assert_close(loss, _plain(hidden, weight, targets, 0.1).detach())


def test_chunked_traced_by_torch_compile():
    """The same tracing as inductor (aot_eager: no code generation): the autograd.Function
    compiles as part of a model graph."""
    hidden, weight, targets = _inputs()
    want = _loss_and_grads(_plain, hidden, weight, targets, 0.1)
    torch._dynamo.reset()
    compiled = torch.compile(chunked_linear_cross_entropy, backend="aot_eager", fullgraph=True)
    got = _loss_and_grads(compiled, hidden, weight, targets, 0.1, chunk_rows=16)
    torch._dynamo.reset()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_chunked_never_holds_the_full_logits():
    """Peak tensor bytes of loss forward + backward, 2048 rows x 8192 classes: plain holds
    several (N, V) float32 tensors; chunked (256 rows) about one chunk's worth plus the
    gradients it keeps for backward."""
    hidden, weight, targets = _inputs(N=2048, C=64, V=8192, ignored=0)
    full = 2048 * 8192 * 4
    peaks = {}
    for name, fn, kw in [("plain", _plain, {}),
                         ("chunked", chunked_linear_cross_entropy, {"chunk_rows": 256})]:
        with TensorMemory() as mem:
            _loss_and_grads(fn, hidden, weight, targets, 0.0, **kw)
        peaks[name] = mem.peak_bytes
    print(f"loss peak tensor bytes: {peaks}, one fp32 (N, V) = {full}")
    assert peaks["plain"] >= 2 * full
    assert peaks["chunked"] < full / 2


@pytest.mark.parametrize("name", ["gpt-tiny", "t5-tiny"])
def test_models_chunked_equal_plain_and_training_returns_the_loss_only(tiny_cfg, name):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (2, 24), generator=g)
    targets = torch.randint(0, 96, (2, 24), generator=g)
    targets[1, 15:] = IGNORE
    batch = ({"input_ids": ids, "targets": targets} if name == "gpt-tiny" else
             {"input_ids": ids, "decoder_input_ids": ids.roll(1, 1), "targets": targets})
    results = {}
    for loss in ("plain", "chunked"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(name, loss=loss, loss_chunk_rows=10, dropout=0.0,
                                     label_smoothing=0.1))
        out = model(**batch)  # training mode
        assert set(out) == {"loss"}
        out["loss"].backward()
        results[loss] = (out["loss"], {n: p.grad for n, p in model.named_parameters()})
        evaluated = model.eval()(**batch)
        assert set(evaluated) == {"loss", "logits"}
        torch.testing.assert_close(evaluated["loss"], out["loss"].detach())
    torch.testing.assert_close(results["chunked"][0], results["plain"][0])
    for n, grad in results["plain"][1].items():
        torch.testing.assert_close(results["chunked"][1][n], grad, rtol=1e-5, atol=1e-6, msg=n)
