"""Order, deduplication and split markers (PROTOCOL.md)."""

from __future__ import annotations

import math

import numpy as np

from fusionrec.data.splits import (
    choose_cold_items,
    dense_index,
    first_position_after,
    latest_duplicate_mask,
    leave_one_out_positions,
    order_interactions,
    strictly_increasing_pairs,
    temporal_cutoffs,
    unique_ids,
)


def test_order_dedup_and_split_markers():
    user = np.array([2, 1, 1, 1, 2, 1])
    ts = np.array([5, 30, 10, 10, 5, 20])
    order = order_interactions(user, ts)
    assert order.tolist() == [2, 3, 5, 1, 0, 4]  # ties (rows 2, 3 and rows 0, 4) keep file order
    movie = np.array([7, 8, 9, 7, 7])
    assert latest_duplicate_mask(np.array([1, 1, 1, 1, 2]), movie).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert latest_duplicate_mask(np.array([3, 1, 3, 3]), np.array([5, 5, 5, 5])).tolist() == [
        True, False, True, False,
    ]  # fmt: skip
    assert strictly_increasing_pairs(np.array([1, 1, 2]), np.array([3, 4, 1]))
    assert not strictly_increasing_pairs(np.array([1, 1, 2]), np.array([3, 3, 1]))  # a repeat
    assert not strictly_increasing_pairs(np.array([2, 1]), np.array([1, 2]))  # not grouped by user
    assert unique_ids(np.array([9, 3, 9, 2**40])).tolist() == [3, 9, 2**40]
    valid, test = leave_one_out_positions(np.array([1, 2, 3, 10]))
    assert valid.tolist() == [-1, -1, 1, 8] and test.tolist() == [-1, -1, 2, 9]
    test_cut, valid_cut = temporal_cutoffs(np.arange(1, 11), 0.9)
    assert (test_cut, valid_cut) == (math.floor(np.quantile(np.arange(1, 11), 0.9)), 8)
    starts = first_position_after(np.array([1, 1, 1, 2, 2]), np.array([1, 5, 9, 2, 3]), 3, 4)
    assert starts.tolist() == [0, 1, 2]
    counts = np.array([10, 1, 5, 7, 4, 6, 9, 5, 8, 5, 5])
    cold = choose_cold_items(counts, 0.25, 5, seed=3)
    assert cold.sum() == 2 and np.all(counts[cold] >= 5)
    assert np.array_equal(cold, choose_cold_items(counts, 0.25, 5, seed=3))
    ids, pos = dense_index(np.array([50, 7, 50, 1_000_000_000_000]))
    assert ids.tolist() == [7, 50, 1_000_000_000_000] and pos.tolist() == [1, 0, 1, 2]
