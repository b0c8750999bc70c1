"""A synthetic translation task that needs attention: a word-by-word dictionary with reordering.

The source language is English-like: `DET ADJ* NOUN VERB DET ADJ* NOUN [ADVERB]` (0-2
adjectives per noun). The target language translates every word through a fixed dictionary
of made-up words (seeded), and reorders:
- adjectives follow their noun, in reverse order ("the big red cat" -> "ka mirot lune sabo"),
- the verb moves to the end of the clause (subject object verb), the adverb after it.

So each target word is a dictionary lookup of a source word at a position that depends on the
sentence's structure: a model has to learn which source word to look at (cross-attention) as
well as the dictionary. With 16 nouns, 10 adjectives, 10 verbs and 6 adverbs there are ~10^10
sentences: the held-out test pairs are sentences never seen in training.

`python -m arrowtrain.demos.translate_task OUT --train 6000 --test 500` writes OUT/pairs.jsonl
({"src": ..., "tgt": ...} per line, for `data_tools shard --source-field src --target-field
tgt`) and the held-out OUT/test.src / OUT/test.tgt (one sentence per line). Pure Python,
deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from pretrain.exit_codes import EXIT_OK

NOUNS = ["cat", "dog", "bird", "fish", "horse", "child", "farmer", "king", "queen", "teacher",
         "river", "house", "tree", "stone", "boat", "garden"]
ADJECTIVES = ["big", "small", "red", "old", "young", "green", "quiet", "happy", "dark", "tall"]
VERBS = ["sees", "likes", "finds", "follows", "paints", "helps", "carries", "watches", "calls",
         "feeds"]
ADVERBS = ["today", "slowly", "again", "often", "quickly", "there"]
DETERMINERS = ["the", "a", "every", "no"]
SYLLABLES = ["ka", "lo", "mi", "ru", "sa", "te", "vo", "ne", "pa", "zu", "bi", "do", "fe", "gu",
             "ho", "ji"]


def dictionary(seed: int = 0) -> dict[str, str]:
    """Every source word -> a distinct made-up target word of 2-3 syllables."""
    rng = random.Random(f"dictionary-{seed}")
    out, used = {}, set()
    for word in DETERMINERS + NOUNS + ADJECTIVES + VERBS + ADVERBS:
        while True:
            made = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
            if made not in used:
                break
        used.add(made)
        out[word] = made
    return out


def _noun_phrase(rng: random.Random) -> list[str]:
    adjectives = rng.sample(ADJECTIVES, rng.choice((0, 1, 1, 2)))
    return [rng.choice(DETERMINERS), *adjectives, rng.choice(NOUNS)]


def sentence(rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """(subject phrase, verb + object phrase, adverb) of one source sentence."""
    adverb = [rng.choice(ADVERBS)] if rng.random() < 0.4 else []
    return _noun_phrase(rng), [rng.choice(VERBS), *_noun_phrase(rng)], adverb


def translate_phrase(phrase: list[str], words: dict[str, str]) -> list[str]:
    """DET ADJ1 ADJ2 NOUN -> det' noun' adj2' adj1'."""
    det, *adjectives, noun = phrase
    return [words[det], words[noun], *(words[a] for a in reversed(adjectives))]


def translate(parts: tuple[list[str], list[str], list[str]], words: dict[str, str]) -> str:
    subject, (verb, *obj), adverb = parts
    out = translate_phrase(subject, words) + translate_phrase(obj, words) + [words[verb]]
    return " ".join(out + [words[a] for a in adverb])


def pairs(n: int, seed: int, words: dict[str, str], exclude: set[str] = frozenset()
          ) -> list[tuple[str, str]]:
    """n distinct (source, target) pairs whose sources are not in `exclude`."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        parts = sentence(rng)
        src = " ".join(parts[0] + parts[1] + parts[2])
        if src not in seen:
            seen.add(src)
            out.append((src, translate(parts, words)))
    return out


def make_task(out: Path, train: int, test: int, seed: int = 0) -> dict[str, Path]:
    """Write OUT/pairs.jsonl (train + val: `data_tools shard` splits it by hash) and the
    held-out OUT/test.src, OUT/test.tgt; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    words = dictionary(seed)
    test_pairs = pairs(test, seed + 1, words)
    train_pairs = pairs(train, seed + 2, words, exclude={s for s, _ in test_pairs})
    paths = {"pairs": out / "pairs.jsonl", "test_src": out / "test.src",
             "test_tgt": out / "test.tgt"}
    with paths["pairs"].open("w", encoding="utf-8") as f:
        for src, tgt in train_pairs:
            f.write(json.dumps({"src": src, "tgt": tgt}) + "\n")
    paths["test_src"].write_text("".join(s + "\n" for s, _ in test_pairs), encoding="utf-8")
    paths["test_tgt"].write_text("".join(t + "\n" for _, t in test_pairs), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arrowtrain.demos.translate_task",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--train", type=int, default=6000,
                   help="training pairs, val included (default 6000)")
    p.add_argument("--test", type=int, default=500, help="held-out test pairs (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dictionary and the "
                   "sentences (default 0)")
    args = p.parse_args(argv)
    paths = make_task(args.out, args.train, args.test, args.seed)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
