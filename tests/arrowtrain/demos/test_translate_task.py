"""The synthetic translation task: deterministic, a bijective dictionary, the reordering rules
(adjectives after their noun in reverse, verb after the object), held-out sentences never in
training, and the files `data_tools shard` reads."""

from __future__ import annotations

import json
import random

from arrowtrain.demos.translate_task import dictionary, make_task, pairs, sentence, translate


def test_dictionary_is_a_bijection_and_seeded():
    words = dictionary(0)
    assert len(set(words.values())) == len(words) == 46
    assert dictionary(0) == words and dictionary(1) != words


def test_reordering_rules():
    w = dictionary(0)
    parts = (["the", "big", "red", "cat"], ["sees", "a", "dog"], ["today"])
    got = translate(parts, w).split()
    assert got == [w["the"], w["cat"], w["red"], w["big"], w["a"], w["dog"], w["sees"],
                   w["today"]]
    # every sentence: same word count, each target word the translation of one source word
    rng = random.Random(5)
    inverse = {v: k for k, v in w.items()}
    for _ in range(200):
        p = sentence(rng)
        src = p[0] + p[1] + p[2]
        tgt = translate(p, w).split()
        assert sorted(inverse[t] for t in tgt) == sorted(src)
        assert tgt[-1 - len(p[2])] == w[p[1][0]]      # the verb ends the clause


def test_files_and_held_out_sentences(tmp_path):
    paths = make_task(tmp_path, train=300, test=40, seed=3)
    train = [json.loads(line) for line in paths["pairs"].read_text().splitlines()]
    test_src = paths["test_src"].read_text().splitlines()
    test_tgt = paths["test_tgt"].read_text().splitlines()
    assert len(train) == 300 and len(test_src) == len(test_tgt) == 40
    assert not {t["src"] for t in train} & set(test_src)
    assert len({t["src"] for t in train}) == 300
    assert make_task(tmp_path / "again", train=300, test=40, seed=3)["pairs"].read_text() == \
        paths["pairs"].read_text()
    assert pairs(5, 1, dictionary(3)) == pairs(5, 1, dictionary(3))
