"""pretrain.train.stats reads the shard folder through the typed manifest (data_tools.manifest):
a hand-edited manifest is one error naming the file and the key, not a KeyError."""

from __future__ import annotations

import json

import pytest

from data_tools.manifest import ManifestError
from pretrain.data.synthetic import docs_from_lists, write_folder
from pretrain.train.stats import token_counts


def test_token_counts_through_the_typed_manifest(tmp_path):
    docs = docs_from_lists([[5, 5, 6], [7]])
    write_folder(tmp_path, {"train": [docs], "val": [docs]}, vocab_size=16)
    assert token_counts(tmp_path)[[0, 5, 6, 7]].tolist() == [2, 2, 1, 1]   # EOS counted once each
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["tokenizer"]["eos_id"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="missing key 'tokenizer.eos_id'") as e:
        token_counts(tmp_path)
    assert str(path) in str(e.value)


def test_token_counts_of_a_pair_folder_count_both_sides(tmp_path):
    from pretrain.data.synthetic import write_pair_folder
    src, tgt = docs_from_lists([[5, 5], [6]]), docs_from_lists([[7], [7, 8, 9]])
    write_pair_folder(tmp_path, {"train": [(src, tgt)], "val": [(src, tgt)]}, vocab_size=16)
    counts = token_counts(tmp_path)
    assert counts[[0, 5, 6, 7, 8, 9]].tolist() == [4, 2, 1, 2, 1, 1]  # an EOS per side and pair
