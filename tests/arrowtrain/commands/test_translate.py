"""arrowtrain translate: the Translator keeps input order whatever the batching."""

from __future__ import annotations

from pathlib import Path

import torch

from pretrain.configlib import load_yaml, validate_section
from pretrain.model import ModelConfig, build_model

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"


def model_of(name: str, vocab: int = 40, **update):
    data = load_yaml(CONFIG_DIR / f"{name}.yaml")
    data.update(vocab_size=vocab, dropout=0.0, **update)
    torch.manual_seed(3)
    return build_model(validate_section(ModelConfig, data, source=name)).eval()


def test_translator_keeps_input_order_whatever_the_batching(tmp_path):
    from arrowtrain.commands.translate import Translator
    from data_tools.tokenizer import build_trainer
    tok, trainer = build_trainer(300, 0, 1)
    tok.train_from_iterator(["the cat sees the dog", "ka lo mi ru sa te"] * 20, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    model = model_of("transformer-tiny", vocab=320, max_seq_len=16)
    tr = Translator(model, tmp_path / "tokenizer.json")
    lines = ["the cat", "", "the dog sees the cat sees the dog", "ka lo", "the " * 30]
    one = tr.translate(lines, beam=2, batch_size=1)
    many = tr.translate(lines, beam=2, batch_size=3)
    assert one == many and len(one) == len(lines)
    assert tr.truncated == 2   # the last line, twice: longer than max_seq_len
    assert tr.translate(lines, beam=1, batch_size=2) == tr.translate(lines, beam=1, batch_size=5)
