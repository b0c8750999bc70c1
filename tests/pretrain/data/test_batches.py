"""train_batches / eval_batches: coverage, determinism, exact resume, world-size changes, and
the DataLoader with worker processes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pretrain.data import DataConfig, eval_batches, train_batches
from pretrain.objectives import open_data


def take(it, n):
    return list(itertools.islice(it, n))


def global_steps(src, B, micro, world, steps, consumed=0, **kw):
    """Each step's global batch: the ranks' micro-batches concatenated in rank order."""
    per_rank = [take(train_batches(src, B, micro, r, world, consumed, num_workers=0, **kw),
                     steps * B // (world * micro)) for r in range(world)]
    k = B // (world * micro)            # micro-batches per rank per step
    out = []
    for s in range(steps):
        parts = [mb for r in range(world) for mb in per_rank[r][s * k:(s + 1) * k]]
        out.append({key: torch.cat([p[key] for p in parts]) for key in parts[0]})
    return out


def row_ids(src):
    """input_ids row -> train sample index (rows are unique in the random test corpus)."""
    n = src.num_samples("train")
    rows = src.batch("train", np.arange(n), np.zeros(n, np.int64))["input_ids"]
    ids = {tuple(r): i for i, r in enumerate(rows.tolist())}
    assert len(ids) == n
    return ids


@pytest.mark.parametrize("world,micro", [(1, 2), (2, 1), (3, 2)])
def test_one_epoch_covers_every_sample_exactly_once(clm, world, micro):
    B, n = 6 * micro, clm.num_samples("train")
    steps = -(-n // B)
    ids = row_ids(clm)
    seen = [ids[tuple(r)] for b in global_steps(clm, B, micro, world, steps)
            for r in b["input_ids"].tolist()]
    assert sorted(seen[:n]) == list(range(n))
    assert seen[:n] != list(range(n))                   # shuffled
    assert seen[:n] != seen[n:2 * n]                    # the next epoch is another permutation


def test_same_seed_same_batches_other_seed_other(clm):
    again = open_data(clm.config, seed=1)
    other = open_data(clm.config, seed=2)
    a = torch.cat([b["input_ids"] for b in take(train_batches(clm, 8, 4, 0, 1, 0, 0), 6)])
    b = torch.cat([b["input_ids"] for b in take(train_batches(again, 8, 4, 0, 1, 0, 0), 6)])
    c = torch.cat([b["input_ids"] for b in take(train_batches(other, 8, 4, 0, 1, 0, 0), 6)])
    assert torch.equal(a, b)
    assert (a != c).any(dim=1).float().mean() > 0.8


@pytest.mark.parametrize("world", [1, 2])
def test_resume_from_any_consumed_samples(clm, world):
    B, micro, n = 8, 2, clm.num_samples("train")
    full = global_steps(clm, B, micro, world, steps=2 * n // B + 3)
    for step in (0, 1, 7, n // B, n // B + 1, 2 * n // B):   # includes epoch boundaries
        resumed = global_steps(clm, B, micro, world, steps=3, consumed=step * B)
        for s in range(3):
            for key in resumed[s]:
                assert torch.equal(resumed[s][key], full[step + s][key]), (step, s, key)


def test_changing_world_size_keeps_global_batches(clm, t5):
    for src in (clm, t5):
        B = 8
        ref = global_steps(src, B, 2, 1, steps=5)
        for world, micro in ((2, 1), (2, 4), (4, 2)):
            got = global_steps(src, B, micro, world, steps=5, consumed=0)
            for s in range(5):
                for key in ref[s]:
                    assert torch.equal(got[s][key], ref[s][key]), (world, micro, s, key)


def test_dataloader_workers_equal_in_process(clm, t5):
    for src in (clm, t5):
        inline = take(train_batches(src, 12, 2, 1, 2, consumed_samples=24, num_workers=0), 9)
        workers = take(train_batches(src, 12, 2, 1, 2, consumed_samples=24, num_workers=2,
                                     prefetch_factor=2), 9)
        for a, b in zip(inline, workers, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]) and a[key].dtype == b[key].dtype


def test_batch_shapes_and_dtypes(clm, t5):
    b = next(train_batches(clm, 4, 2, 0, 2, 0, num_workers=0))
    assert {k: (tuple(v.shape), v.dtype) for k, v in b.items()} == {
        "input_ids": ((2, 8), torch.int64), "targets": ((2, 8), torch.int64),
        "doc_ids": ((2, 8), torch.int32)}
    assert torch.equal(b["input_ids"][:, 1:], b["targets"][:, :-1])
    b = next(train_batches(t5, 4, 2, 0, 2, 0, num_workers=0))
    assert {k: (tuple(v.shape), v.dtype) for k, v in b.items()} == {
        "input_ids": ((2, 48), torch.int64), "attention_mask": ((2, 48), torch.bool),
        "decoder_input_ids": ((2, 16), torch.int64), "targets": ((2, 16), torch.int64)}


def test_bad_layouts_are_refused(clm):
    with pytest.raises(ValueError, match=r"micro_batch_size × ranks \(3 × 2\)"):
        train_batches(clm, 8, 3, 0, 2, 0)
    with pytest.raises(ValueError, match="not a multiple of the global batch 8"):
        train_batches(clm, 8, 2, 0, 2, consumed_samples=12)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        train_batches(clm, 8, 2, 2, 2, 0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_batches_fixed_order_split_over_ranks(clm, world):
    micro, n = 2, clm.num_samples("val")
    per_rank = [list(eval_batches(clm, micro, r, world)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1              # same count on every rank
    rows = [per_rank[k % world][k // world]["input_ids"] for k in range(world * len(per_rank[0]))]
    got = torch.cat(rows)
    want = clm.batch("val", np.arange(len(got)), np.zeros(len(got), np.int64))["input_ids"]
    assert torch.equal(got, torch.from_numpy(want))
    assert n - len(got) < micro * world                      # only a short tail left out
    assert list(eval_batches(clm, micro, 0, world)).__len__() == len(per_rank[0])  # repeatable
    short = list(eval_batches(clm, micro, 0, world, max_samples=2 * micro * world))
    assert len(short) == 2


def test_eval_refuses_too_small_val(clm):
    with pytest.raises(ValueError, match=r"eval.max_samples \(7\) is less than one evaluation "
                                         r"batch, micro_batch_size × ranks \(4 × 2\)"):
        eval_batches(clm, 4, 0, 2, max_samples=7)


def test_mixture_through_data_source(tmp_path, make_folder):
    a = make_folder(tmp_path / "a", seed=1)
    b = make_folder(tmp_path / "b", seed=2, train_tokens=(700,))
    mix = [{"path": str(a), "weight": 0.7}, {"path": str(b), "weight": 0.3}]
    src = open_data(DataConfig(path=mix, seq_len=8), seed=0)
    n_a = open_data(DataConfig(path=str(a), seq_len=8), seed=0).num_samples("train")
    idx, epoch = src.order(np.arange(10_000))
    from_a = idx < n_a
    assert abs(from_a.mean() - 0.7) <= 0.02
    # folder b is small: it goes through several epochs, each one a full permutation of b
    n_b = src.num_samples("train") - n_a
    b_idx = idx[~from_a] - n_a
    assert sorted(b_idx[:n_b].tolist()) == list(range(n_b)) and epoch[~from_a][n_b] == 1
    assert sorted(idx[from_a][:n_a].tolist()) == list(range(n_a))
    batch = next(train_batches(src, 4, 4, 0, 1, 0, num_workers=0))
    assert torch.equal(batch["input_ids"], torch.from_numpy(
        src.batch("train", *src.order(np.arange(4)))["input_ids"]))
    other = open_data(DataConfig(path=[mix[0], {**mix[1], "weight": 0.4}], seq_len=8), seed=0)
    assert other.fingerprint != src.fingerprint
    assert len({src.fingerprint, open_data(DataConfig(path=str(a), seq_len=8), 0).fingerprint}) == 2


def test_order_is_a_pure_function_of_position_across_memo_blocks(folder):
    src = open_data(DataConfig(path=str(folder), seq_len=8), seed=3)
    n = src.num_samples("train")
    positions = np.arange(4000, 9300)                    # crosses ORDER_BLOCK boundaries
    idx, epoch = src.order(positions)
    np.testing.assert_array_equal(epoch, positions // n)
    fresh = open_data(DataConfig(path=str(folder), seq_len=8), seed=3)
    shuffled = np.random.default_rng(0).permutation(len(positions))
    idx2, epoch2 = fresh.order(positions[shuffled])
    np.testing.assert_array_equal(idx2, idx[shuffled])
    np.testing.assert_array_equal(epoch2, epoch[shuffled])
    for e in np.unique(epoch)[1:-1]:                     # every whole epoch is a permutation
        assert sorted(idx[epoch == e].tolist()) == list(range(n))
