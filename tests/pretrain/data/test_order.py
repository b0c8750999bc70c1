"""The computed permutation and the mixing schedule."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.data.order import MIX_BLOCK, BlockPermutation, Mixture, Permutation, derive_keys


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_permutation_is_a_bijection(n):
    image = Permutation(n, derive_keys("t", 0))(np.arange(n))
    assert sorted(image.tolist()) == list(range(n))


def test_permutation_depends_on_key_and_shuffles():
    n = 10_000
    a = Permutation(n, derive_keys("order", 1, 0, 0))(np.arange(n))
    b = Permutation(n, derive_keys("order", 1, 0, 1))(np.arange(n))
    again = Permutation(n, derive_keys("order", 1, 0, 0))(np.arange(n))
    np.testing.assert_array_equal(a, again)
    assert (a != b).mean() > 0.99
    assert (a == np.arange(n)).mean() < 0.01           # not close to the identity
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.05


def test_permutation_of_a_subset_equals_the_whole():
    perm = Permutation(777, derive_keys("x", 3))
    whole = perm(np.arange(777))
    picked = np.array([776, 0, 5, 5, 300])
    np.testing.assert_array_equal(perm(picked), whole[picked])


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05],
                                     [1 / 3, 1 / 3, 1 / 3]])
def test_mixing_proportions_within_two_percent(weights):
    folder, count = Mixture(weights)(np.arange(10_000))
    realised = np.bincount(folder, minlength=len(weights)) / 10_000
    np.testing.assert_allclose(realised, weights, atol=0.02)
    # also over a window that is not aligned to a block
    folder_w, _ = Mixture(weights)(np.arange(123_457, 133_457))
    np.testing.assert_allclose(np.bincount(folder_w, minlength=len(weights)) / 10_000, weights,
                               atol=0.02)
    for k in range(len(weights)):                     # each folder's samples counted 0, 1, 2...
        assert count[folder == k].tolist() == list(range((folder == k).sum()))


def test_mixing_counts_continue_across_blocks():
    mix = Mixture([0.6, 0.4])
    folder, count = mix(np.arange(3 * MIX_BLOCK))
    for k in (0, 1):
        assert count[folder == k].tolist() == list(range((folder == k).sum()))


def test_mixing_refuses_a_weight_too_small():
    with pytest.raises(ValueError, match="never be sampled"):
        Mixture([1.0, 1e-6])


@pytest.mark.parametrize("n,block", [(1, 8), (7, 3), (100, 8), (1000, 64), (4097, 100),
                                     (50, 50), (50, 500)])
def test_block_permutation_is_a_bijection_that_reads_one_block_at_a_time(n, block):
    perm = BlockPermutation(n, block, ("t", n))
    image = perm(np.arange(n))
    assert sorted(image.tolist()) == list(range(n))
    visited = image // perm.block                    # the block of each position, in order
    assert (np.diff(visited) != 0).sum() == perm.num_blocks - 1   # each block visited once
    np.testing.assert_array_equal(perm(np.arange(n)[::-1])[::-1], image)   # any subset


def test_block_permutation_shuffles_blocks_and_within_them():
    n, block = 10_000, 100
    a = BlockPermutation(n, block, ("order", 1, 0, 0))(np.arange(n))
    b = BlockPermutation(n, block, ("order", 1, 0, 1))(np.arange(n))
    assert (a != b).mean() > 0.99                    # another epoch, another order
    blocks = a[::block] // block
    assert abs(np.corrcoef(np.arange(len(blocks)), blocks)[0, 1]) < 0.3
    within = a[:block] - (a[0] // block) * block
    assert (within == np.arange(block)).mean() < 0.1
