"""seq2seq on pair folders: padded pair batches equal the shards read naively, over-long pairs
skipped and counted, length buckets (pure function of the step, lower padding), exact resume
and rank slicing, DataLoader workers, eval order, damaged shards, folder kind checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_tools.folder import read_manifest
from pretrain.data import DataConfig, DataError, eval_batches, train_batches
from pretrain.data.synthetic import write_pair_folder, write_random_pair_folder
from pretrain.objectives import open_data

VOCAB, EOS, PAD = 300, 0, 1


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "p"
    write_random_pair_folder(path, 0, (400, 333), (150,), VOCAB, batch_rows=57)
    return path


def cfg(path, **kw) -> DataConfig:
    kw = {"input_length": 24, "target_length": 20, "bucket_pool_batches": 8, **kw}
    return DataConfig(path=str(path), objective="seq2seq", num_workers=0, **kw)


@pytest.fixture(scope="module")
def s2s(pair_folder):
    return open_data(cfg(pair_folder), seed=3)


def naive_pairs(path, split):
    out = []
    for _, s in read_manifest(path).shards(split):
        with pa.memory_map(str(path / s.file)) as f:
            t = pa.ipc.open_file(f).read_all()
        out += list(zip(t.column("source").to_pylist(), t.column("target").to_pylist()))
    return out


def test_pair_batch_is_the_padded_pairs_with_eos(s2s, pair_folder):
    fits = [(a, b) for a, b in naive_pairs(pair_folder, "train") if len(a) < 24 and len(b) < 20]
    assert s2s.num_samples("train") == len(fits)
    idx = np.array([0, 5, len(fits) - 1, 17])
    b = s2s.batch("train", idx, np.zeros_like(idx))
    S, T = max(len(fits[i][0]) for i in idx) + 1, max(len(fits[i][1]) for i in idx) + 1
    assert b["input_ids"].shape == (4, S) and b["targets"].shape == (4, T)
    for row, i in enumerate(idx):
        src, tgt = fits[i]
        assert b["input_ids"][row].tolist() == src + [EOS] + [PAD] * (S - len(src) - 1)
        assert b["attention_mask"][row].tolist() == [True] * (len(src) + 1) + \
            [False] * (S - len(src) - 1)
        assert b["targets"][row].tolist() == tgt + [EOS] + [-100] * (T - len(tgt) - 1)
        assert b["decoder_input_ids"][row].tolist() == [PAD] + tgt + [PAD] * (T - len(tgt) - 1)
    assert {k: v.dtype for k, v in b.items()} == {"input_ids": np.int64, "attention_mask": bool,
                                                  "decoder_input_ids": np.int64,
                                                  "targets": np.int64}


def test_over_long_pairs_are_skipped_and_counted(pair_folder):
    src = open_data(cfg(pair_folder, input_length=8, target_length=6), seed=0)
    for split in ("train", "val"):
        pairs = naive_pairs(pair_folder, split)
        long = sum(len(a) + 1 > 8 or len(b) + 1 > 6 for a, b in pairs)
        assert src.objective.skipped_pairs[split] == long > 0
        assert src.num_samples(split) == len(pairs) - long
    b = src.batch("train", np.arange(src.num_samples("train")),
                  np.zeros(src.num_samples("train"), np.int64))
    assert b["input_ids"].shape[1] <= 8 and b["targets"].shape[1] <= 6



def test_no_pair_fitting_is_one_clear_error(tmp_path):
    from pretrain.data.synthetic import docs_from_lists
    three = docs_from_lists([[5, 6, 7]] * 4)
    write_pair_folder(tmp_path, {"train": [(three, three)], "val": [(three, three)]}, VOCAB)
    with pytest.raises(DataError, match="none of the 4 train pairs fits data.input_length 3 / "
                                        "data.target_length 3 .EOS included.: raise them"):
        open_data(cfg(tmp_path, input_length=3, target_length=3), seed=0)


def test_steps_cover_the_training_order_and_sort_by_length(s2s):
    """Pools only reorder within themselves: K*B consecutive positions give the same (index,
    epoch) multiset as the order itself, each step's batch sorted by its longer side."""
    B, K = 16, s2s.config.bucket_pool_batches
    for pool in (0, 7):   # pool 7 runs into the second epoch
        steps = [s2s.objective.step_samples(s2s, pool * K + j, B) for j in range(K)]
        got = sorted(zip(*(np.concatenate(x) for x in zip(*steps))))
        want = sorted(zip(*s2s.order(np.arange(pool * K * B, (pool + 1) * K * B))))
        assert got == want
        for index, _ in steps:
            src, tgt = s2s.objective.pair_lengths(s2s, "train", index)
            assert (np.diff(np.maximum(src, tgt)) >= 0).all()


def padding(src, steps, B):
    pad = total = 0
    for s in range(steps):
        index, _ = src.objective.step_samples(src, s, B)
        for g in range(0, B, 4):                       # micro-batches of 4
            a, b = src.objective.pair_lengths(src, "train", index[g:g + 4])
            pad += (a.max() - a).sum() + (b.max() - b).sum()
            total += (a.max() + b.max()) * 4
    return pad / total


def test_buckets_lower_padding(pair_folder, s2s):
    one = open_data(cfg(pair_folder, bucket_pool_batches=1), seed=3)
    unsorted = padding(one, 16, 4)       # pools of one micro-batch: nothing is sorted
    assert padding(s2s, 16, 16) < 0.6 * unsorted


def collect(src, world, micro=2, B=8, consumed=0, steps=4, **kw):
    per_rank = []
    for r in range(world):
        it = train_batches(src, B, micro, r, world, consumed_samples=consumed, **kw)
        per_rank.append([next(it) for _ in range(steps * B // (micro * world))])
    return per_rank


def as_rows(batches):
    return sorted(tuple(x.tolist()) for b in batches for x in b["input_ids"])


def test_resume_and_rank_slicing_are_exact(s2s):
    [straight] = collect(s2s, 1, steps=6)
    [resumed] = collect(s2s, 1, consumed=3 * 8, steps=3)
    for a, b in zip(straight[12:], resumed):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    two = collect(s2s, 2, steps=6)
    for step in range(6):   # the same global batch, micro-batches dealt round-robin
        mine = straight[step * 4:(step + 1) * 4]
        dealt = [two[r][step * 2 + m] for m in range(2) for r in range(2)]
        assert all(np.array_equal(a[k], b[k]) for a, b in zip(mine, dealt) for k in a)


def test_dataloader_workers_equal_in_process(s2s):
    [a] = collect(s2s, 1, steps=3)
    [b] = collect(s2s, 1, steps=3, num_workers=2)
    assert all(np.array_equal(x[k].numpy(), y[k].numpy()) for x, y in zip(a, b) for k in x)


def test_eval_batches_sorted_by_length_same_samples(s2s):
    n = 4 * 2 * (s2s.num_samples("val") // 8)
    batches = [b for r in range(2) for b in eval_batches(s2s, 4, r, 2)]
    assert len(batches) * 4 == n
    want = s2s.batch("val", np.arange(n), np.zeros(n, np.int64))
    got_rows = sorted(tuple(x[m].tolist()) for b in batches
                      for x, m in zip(b["input_ids"], b["attention_mask"]))
    assert got_rows == sorted(tuple(x[m].tolist()) for x, m in
                              zip(want["input_ids"], want["attention_mask"]))

    def pad(bs):
        return sum(int((~b["attention_mask"]).sum() + (b["targets"] == -100).sum()) for b in bs)

    in_index_order = [s2s.batch("val", np.arange(i, i + 4), np.zeros(4, np.int64))
                      for i in range(0, n, 4)]
    assert pad(batches) < 0.5 * pad(in_index_order)


def test_damaged_target_names_file_and_pair(tmp_path, pair_folder):
    """A target id made >= vocab after the start-up checks (the file changed in place, seen
    through the memory map) stops the batch naming the file and the pair."""
    import shutil
    d = tmp_path / "d"
    shutil.copytree(pair_folder, d)
    src = open_data(cfg(d, input_length=400, target_length=400, bucket_pool_batches=1), seed=0)
    path = d / "train" / "00001.arrow"
    whole = pa.memory_map(str(path)).read_buffer()          # zero copy: buffers point into it
    values = pa.ipc.open_file(pa.BufferReader(whole)).read_all().column("target").chunks[-1].values
    at = values.buffers()[1].address - whole.address + (values.offset + len(values) - 1) * 2
    del values, whole
    with open(path, "r+b") as f:          # the file's last target token, changed in place
        f.seek(at)
        f.write(np.array([VOCAB + 5], np.uint16).tobytes())
    n = src.num_samples("train")
    with pytest.raises(DataError, match=r"00001\.arrow: pair 332 .*target token id 305"):
        src.batch("train", np.arange(n - 3, n), np.zeros(3, np.int64))


def test_folder_kinds_must_match_the_objective(pair_folder, tmp_path):
    from pretrain.data.synthetic import random_docs, write_folder
    with pytest.raises(DataError, match="a pair folder .* use data.objective seq2seq"):
        open_data(DataConfig(path=str(pair_folder), seq_len=8), seed=0)
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "docs", {"train": [random_docs(rng, 500, 10, 2, 300)],
                                     "val": [random_docs(rng, 500, 10, 2, 300)]}, VOCAB)
    with pytest.raises(DataError, match="a document folder: data.objective seq2seq needs a pair"):
        open_data(cfg(tmp_path / "docs"), seed=0)
