"""pretrain.model.generate, encoder-decoders: greedy decoding equals the argmax rollout of the full
forward; beam search with a beam wide enough to be exhaustive finds the best length-normalised
translation that brute force finds."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from pretrain.configlib import load_yaml, validate_section
from pretrain.model import ModelConfig, build_model
from pretrain.model.generate import beam_search, greedy, length_penalty

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"
EOS, START = 0, 1


def model_of(name: str, vocab: int = 40, **update):
    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    data.update(vocab_size=vocab, dropout=0.0, **update)
    torch.manual_seed(3)
    return build_model(validate_section(ModelConfig, data, source=name)).eval()


def source(B=3, S=6, vocab=40):
    torch.manual_seed(4)
    ids = torch.randint(2, vocab, (B, S))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, -2:] = False
    return ids, mask


@pytest.mark.parametrize("name", ["transformer-tiny", "t5-tiny"])
def test_greedy_is_the_argmax_rollout_of_the_full_forward(name):
    model = model_of(name)
    ids, mask = source()
    got = greedy(model, ids, mask, 6, START, EOS)
    with torch.no_grad():
        for b in range(3):
            prefix, want = [START], []
            for _ in range(6):
                logits = model(input_ids=ids[b:b + 1, : int(mask[b].sum())],
                               decoder_input_ids=torch.tensor([prefix]))["logits"]
                nxt = int(logits[0, -1].argmax())
                if nxt == EOS:
                    break
                want.append(nxt)
                prefix.append(nxt)
            assert got[b] == want


def brute_force(model, ids, mask, max_len: int, alpha: float) -> list[int]:
    """The EOS-terminated sequence of at most max_len tokens with the best
    log P / lp(length), by enumerating all of them."""
    V = model.cfg.vocab_size
    best, best_ids = -math.inf, None
    with torch.no_grad():
        memory = model.encode(ids, mask)
        for n in range(max_len):
            for body in itertools.product(range(V), repeat=n):
                if EOS in body:
                    continue
                seq = [START, *body]
                logp = torch.log_softmax(model.decode(torch.tensor([seq]), memory, mask), -1)
                total = sum(float(logp[0, i, t]) for i, t in enumerate([*body, EOS]))
                score = total / length_penalty(n + 1, alpha)
                if score > best:
                    best, best_ids = score, list(body)
    return best_ids


def test_exhaustive_beam_search_finds_the_best_normalised_translation():
    """Vocabulary 5, at most 3 tokens: a beam of 125 keeps every prefix, so beam search must
    return what brute force finds; a beam of 1 may not."""
    model = model_of("t5-tiny", vocab=5)
    ids, mask = source(B=2, S=4, vocab=5)
    for alpha in (0.0, 0.6, 5.0):   # 5 favours length: the best is then two tokens long
        got = beam_search(model, ids, mask, beam=125, alpha=alpha, max_len=3, start_id=START,
                          eos_id=EOS)
        for b in range(2):
            assert got[b] == brute_force(model, ids[b:b + 1], mask[b:b + 1], 3, alpha)


def test_beam_search_batches_like_single_sentences():
    model = model_of("transformer-tiny")
    ids, mask = source()
    together = beam_search(model, ids, mask, 4, 0.6, 8, START, EOS)
    alone = [beam_search(model, ids[b:b + 1], mask[b:b + 1], 4, 0.6, 8, START, EOS)[0]
             for b in range(3)]
    assert together == alone
