"""Piecewise encoding of long documents gives exactly the ids of encoding them whole."""

from data_tools.encode import Encoder, split_long
from tests.data_tools.dt_util import TRICKY, stdlib_texts


def test_pieces_rejoin_to_the_text():
    text = "".join(stdlib_texts(50_000, piece_chars=10**9))
    pieces = split_long(text, 300)
    assert "".join(pieces) == text and len(pieces) > 50


def test_piecewise_ids_equal_whole_ids(tokenizer):
    texts = stdlib_texts(120_000, piece_chars=20_000) + TRICKY + ["a  \n\n b\t\n" * 500]
    whole = Encoder(str(tokenizer), "uint16", long_doc_chars=10**9)
    pieces = Encoder(str(tokenizer), "uint16", long_doc_chars=100, piece_chars=64)
    assert pieces.piecewise
    a, a_len = whole.encode(texts)
    b, b_len = pieces.encode(texts)
    assert a_len.tolist() == b_len.tolist() and a.tolist() == b.tolist()
