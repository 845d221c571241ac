"""ExactSearch scores the movies a block at a time (and only the candidates of a restricted split): its top K must be
the top K of the whole score matrix with the exclusions and non-candidates removed, for any block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrec.retrieval import ExactSearch


def brute_force(users, movies, exclude, candidate_mask, k):
    scores = users @ movies.T
    if candidate_mask is not None:
        scores[:, ~torch.from_numpy(candidate_mask)] = float("-inf")
    scores[torch.from_numpy(exclude[0]), torch.from_numpy(exclude[1])] = float("-inf")
    top = scores.topk(k, dim=1)
    return np.where(torch.isfinite(top.values).numpy(), top.indices.numpy(), -1)


@pytest.mark.parametrize("block_size", [1, 7, 64, 8192])
@pytest.mark.parametrize("restricted", [False, True])
def test_blocked_search_equals_ranking_the_whole_score_matrix(block_size, restricted):
    generator = torch.Generator().manual_seed(block_size)
    movies = torch.nn.functional.normalize(torch.randn(50, 8, generator=generator, dtype=torch.float64), dim=-1).float()
    users = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator, dtype=torch.float64), dim=-1).float()
    rng = np.random.default_rng(block_size)
    candidate_mask = rng.random(50) < 0.3 if restricted else None
    rows = np.repeat(np.arange(6), [0, 3, 10, 45, 50, 5])  # up to every movie excluded: rows padded with -1
    exclude = (rows, np.concatenate([rng.permutation(50)[:n] for n in (0, 3, 10, 45, 50, 5)]))
    k = 20
    indices, scores = ExactSearch(movies, candidate_mask, block_size=block_size).search_pairs(users, exclude, k)
    expected = brute_force(users, movies, exclude, candidate_mask, k)
    np.testing.assert_array_equal(indices, expected)
    assert (indices[4] == -1).all() and np.isneginf(scores[4]).all()
    if restricted:
        assert np.isin(indices[indices >= 0], np.flatnonzero(candidate_mask)).all()
        assert (indices[0] >= 0).sum() == min(k, candidate_mask.sum())
