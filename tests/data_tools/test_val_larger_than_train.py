"""`shard --val-tokens N` (or a large --val-fraction) that would leave train smaller than val is
refused and writes nothing (issue 19 item 6: 86,000 of 86,252 tokens left 2 train documents
with a warning only); one val document is always allowed (the least a val split can be)."""

from data_tools.folder import read_manifest
from tests.data_tools.dt_util import cli


def shard(corpus, tokenizer, out, *extra):
    return cli("shard", corpus, "--tokenizer", tokenizer, "--out", out, "--workers", "1", *extra)


def test_val_tokens_leaving_train_smaller_than_val_is_refused(tmp_path, corpus, tokenizer,
                                                             capsys):
    whole = tmp_path / "whole"
    assert shard(corpus, tokenizer, whole, "--val-fraction", "0.05") == 0
    total = sum(s.tokens for s in read_manifest(whole).splits.values())
    capsys.readouterr()
    budget = total * 9 // 10
    assert shard(corpus, tokenizer, tmp_path / "o", "--val-tokens", budget) == 2
    err = capsys.readouterr().err
    assert f"--val-tokens {budget} leaves train smaller than val" in err
    assert f"of {total:,} tokens" in err and f"--val-tokens {total // 10} is a tenth" in err
    assert not (tmp_path / "o").exists()
    assert shard(corpus, tokenizer, tmp_path / "f", "--val-fraction", "0.8") == 2
    assert "--val-fraction 0.8 leaves train smaller than val" in capsys.readouterr().err
    # under half of the tokens in val is fine
    assert shard(corpus, tokenizer, tmp_path / "ok", "--val-tokens", total // 3) == 0
