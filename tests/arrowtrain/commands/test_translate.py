"""arrowtrain translate: the Translator keeps input order whatever the batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.configlib import load_yaml, validate_section
from pretrain.model import ModelConfig, build_model

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"


@pytest.fixture(autouse=True)
def _keep_caplog(monkeypatch):
    """main() configures logging once per process, replacing the root logger's handlers (and
    caplog's with them) when it is the first to: keep it from doing so in these tests."""
    monkeypatch.setattr("pretrain.logs._CONFIGURED", True)


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


# ---- issue 19 item 3: output lines up with input; every input checked before translating ----

ODD = "one\u2028still one\x85and\x0cone\r\ntwo\u2029two\nthree"  # 3 lines as data shard counts


def test_input_lines_split_at_line_ends_only_as_data_shard_counts(tmp_path):
    from arrowtrain.commands.translate import read_input_lines
    from data_tools.inputs import count_lines, split_lines

    path = tmp_path / "in.txt"
    path.write_bytes(ODD.encode("utf-8"))
    lines = read_input_lines(path)
    assert lines == ["one\u2028still one\x85and\x0cone", "two\u2029two", "three"]
    assert len(lines) == count_lines(str(path)) == len(split_lines(ODD + "\n"))
    assert split_lines("") == [] and split_lines("\n") == [""] and split_lines("a\r\n") == ["a"]


def test_translations_with_line_ends_stay_one_line_each():
    from arrowtrain.commands.translate import output_text

    text = output_text(["a\nb", "c\r\nd", "", "e\u2028f"])
    assert text.split("\n") == ["a b", "c d", "", "e\u2028f", ""]


def _translate(tmp_path, *args):
    """`translate` on a folder with no run: each check must fire before the model is loaded."""
    from arrowtrain.commands.translate import main

    return main([str(tmp_path / "no-run"), *args])


def test_bad_output_and_input_are_refused_before_the_model_is_loaded(tmp_path, caplog):
    import os
    import stat

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # made here, never the machine's
    (tmp_path / "in.txt").write_text("fine\n")
    assert _translate(tmp_path, "--input", str(tmp_path / "in.txt"), "--output", str(fifo)) == 2
    assert f"--output {fifo} is a FIFO" in caplog.text and stat.S_ISFIFO(os.stat(fifo).st_mode)
    (tmp_path / "bad.txt").write_bytes(b"fine\nnot \xff utf-8\n")
    assert _translate(tmp_path, "--input", str(tmp_path / "bad.txt")) == 2
    assert f"{tmp_path / 'bad.txt'}:2: not UTF-8 text (byte 0xff" in caplog.text
    assert "no checkpoint" not in caplog.text  # nothing got as far as loading the run


@pytest.mark.parametrize("args, named", [
    (["--length-penalty", "nan"], "--length-penalty: nan is not a finite number >= 0"),
    (["--length-penalty", "-1"], "--length-penalty: -1 is not a finite number >= 0"),
    (["--device", "gpu0"], "--device: 'gpu0' is not cpu, cuda or cuda:N"),
])
def test_bad_options_are_usage_errors(args, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _translate(tmp_path, *args)
    assert e.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a GPU-less host")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _translate(tmp_path, "--device", "cuda")
    assert "--device: cuda: no GPU is visible here" in capsys.readouterr().err
