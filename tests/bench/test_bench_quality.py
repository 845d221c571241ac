"""The quality benchmark's per-example helpers: target ranks, NDCG per example, paired bootstrap interval."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_quality  # noqa: E402

from fusionrec.metrics.fusionrec_metrics import ranking_metrics  # noqa: E402


def test_target_ranks_are_positions_or_minus_one():
    ranked = np.array([[3, 1, -1], [2, 5, 7], [9, 9, 9]])
    assert bench_quality.target_ranks(ranked, np.array([1, 9, 9])) == [1, -1, 0]


def test_ndcg_per_example_matches_the_metric_definition():
    values = bench_quality.ndcg_per_example([0, 1, 9, 10, -1])
    np.testing.assert_allclose(values, [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])
    ranked = np.array([[4, 2, 8], [1, 3, 5], [7, 6, 0]])
    targets = np.array([2, 9, 0])
    per_example = bench_quality.ndcg_per_example(bench_quality.target_ranks(ranked, targets), k=3)
    expected = ranking_metrics(ranked, targets, k_values=(3,))["ndcg@3"]
    assert per_example.mean() == pytest.approx(expected)


def test_paired_bootstrap_interval_covers_the_ratio_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    low, high = bench_quality.paired_bootstrap_ratio(2 * base, base, samples=500)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)  # paired: a constant ratio has no spread
    noisy = base + rng.normal(0, 0.3, 200)
    low, high = bench_quality.paired_bootstrap_ratio(noisy, base, samples=2000)
    assert low < noisy.mean() / base.mean() < high and high - low > 0.05
    big = rng.random(20_000)
    big_low, big_high = bench_quality.paired_bootstrap_ratio(big + rng.normal(0, 0.3, 20_000), big, samples=200)
    assert big_high - big_low < (high - low) / 4
