"""Ratings -> time-ordered, deduplicated interactions with dense indices, and the split rules of PROTOCOL.md:
leave-one-out positions, temporal cut-offs, the seeded cold-item draw. Column-wise numpy, no per-row Python.

Order: each user's ratings sorted by timestamp with a STABLE sort, so equal timestamps keep the source file order
(MovieLens has many; the tie rule decides a large share of test targets). Duplicate (user, movie) pairs keep the
latest rating.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from fusionrec.data.reading import RatingsColumns


def dense_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, position of each id in it) in O(n) when the id range is moderate."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return ids.copy(), np.zeros(0, dtype=np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 64_000_000:
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[ids - lo] = True
        lookup = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present).astype(np.int64) + lo, lookup[ids - lo]
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, inverse.astype(np.int64)


def order_interactions(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Permutation sorting by (user, timestamp); stable, so ties keep the input (source file) order."""
    user = np.asarray(user, dtype=np.int64)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    if user.size == 0:
        return np.zeros(0, dtype=np.int64)
    if user.min() >= 0 and user.max() < 2**31 and timestamp.min() >= 0 and timestamp.max() < 2**32:
        return np.argsort((user << 32) | timestamp, kind="stable")
    return np.lexsort((timestamp, user))


def latest_duplicate_mask(user: np.ndarray, movie: np.ndarray) -> np.ndarray:
    """On time-ordered rows, True for every (user, movie) row that a later row repeats (keep the latest).

    Sort-based: a stable argsort of the pair key puts each pair's rows together in time order; all but the last
    of a run are duplicates. (Several times faster than hashing 26M keys.)"""
    user = np.asarray(user, dtype=np.int64)
    movie = np.asarray(movie, dtype=np.int64)
    mask = np.zeros(user.size, dtype=bool)
    if user.size < 2:
        return mask
    key = user * (int(movie.max()) + 1) + movie
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    repeated = np.zeros(user.size, dtype=bool)
    repeated[:-1] = sorted_key[:-1] == sorted_key[1:]
    mask[order[repeated]] = True
    return mask


def strictly_increasing_pairs(user: np.ndarray, movie: np.ndarray) -> bool:
    """True when rows are sorted by (user, movie) with no repeats (the Kaggle/MovieLens file order): then there
    are no duplicate pairs and the O(n log n) duplicate search can be skipped."""
    user = np.asarray(user, dtype=np.int64)
    movie = np.asarray(movie, dtype=np.int64)
    if user.size < 2:
        return True
    du = np.diff(user)
    if np.any(du < 0):
        return False
    return bool(np.all((du > 0) | (np.diff(movie) > 0)))


def unique_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted unique ids (O(n) bitmap when the id range is moderate)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return ids.copy()
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 64_000_000:
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[ids - lo] = True
        return np.flatnonzero(present).astype(np.int64) + lo
    return np.unique(ids)


def leave_one_out_positions(lengths: np.ndarray, min_interactions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(validation position n-2, test position n-1) per user; -1 for users with n < min_interactions."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ok = lengths >= min_interactions
    valid = np.where(ok, lengths - 2, -1).astype(np.int32)
    test = np.where(ok, lengths - 1, -1).astype(np.int32)
    return valid, test


def temporal_cutoffs(timestamps: np.ndarray, quantile: float = 0.9) -> tuple[int, int]:
    """(test_cutoff, valid_cutoff): floor of the linear-interpolated `quantile` of all timestamps, then the same
    quantile of the timestamps <= test_cutoff. Flooring changes nothing for integer timestamps (t > c iff
    t > floor(c)) and keeps the cut-offs integers."""
    ts = np.asarray(timestamps, dtype=np.int64)
    if ts.size == 0:
        return 0, 0
    test_cutoff = int(math.floor(np.quantile(ts, quantile)))
    rest = ts[ts <= test_cutoff]
    valid_cutoff = int(math.floor(np.quantile(rest, quantile))) if rest.size else test_cutoff
    return test_cutoff, valid_cutoff


def first_position_after(user: np.ndarray, timestamp: np.ndarray, num_users: int, cutoff: int) -> np.ndarray:
    """Per user (rows sorted by user then time): first position with timestamp > cutoff = count of t <= cutoff
    (the user's length when none is later)."""
    user = np.asarray(user, dtype=np.int64)
    return np.bincount(user[np.asarray(timestamp) <= cutoff], minlength=num_users).astype(np.int32)


def choose_cold_items(
    num_ratings: np.ndarray, fraction: float, min_interactions: int, seed: int
) -> np.ndarray:
    """Seeded cold-item mask: eligible = movies with >= min_interactions ratings (ascending movie_index);
    k = floor(fraction * eligible + 0.5); np.random.default_rng(seed).choice(eligible, k, replace=False)."""
    num_ratings = np.asarray(num_ratings)
    eligible = np.flatnonzero(num_ratings >= min_interactions)
    k = int(math.floor(fraction * eligible.size + 0.5))
    mask = np.zeros(num_ratings.size, dtype=bool)
    if k > 0:
        chosen = np.random.default_rng(seed).choice(eligible.size, size=k, replace=False)
        mask[eligible[chosen]] = True
    return mask


@dataclass
class Interactions:
    """Deduplicated, time-ordered interactions (rows sorted by user_index then timestamp)."""

    user_ids: np.ndarray  # user_ids[user_index - 1]
    user_index: np.ndarray  # int32, 1-based
    movie_index: np.ndarray  # int32
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64
    movie_ids: np.ndarray  # movie_ids[movie_index] for rated movies


def build_interactions(rc: RatingsColumns, skipped: Counter) -> Interactions:
    """Dense indices, stable time order, keep the latest of duplicate (user, movie) pairs."""
    no_duplicates = strictly_increasing_pairs(rc.user, rc.movie)
    user_ids, user_pos = dense_index(rc.user)
    movie_ids, movie_pos = dense_index(rc.movie)
    user_index = user_pos + 1
    order = order_interactions(user_index, rc.timestamp)
    user_index = user_index[order].astype(np.int32)
    movie_index = movie_pos[order].astype(np.int32)
    del user_pos, movie_pos
    rating = rc.rating[order]
    timestamp = rc.timestamp[order]
    del order
    dup = None if no_duplicates else latest_duplicate_mask(user_index, movie_index)
    n_dup = 0 if dup is None else int(dup.sum())
    if n_dup:
        skipped["ratings/duplicate_user_movie"] += n_dup
        keep = ~dup
        user_index, movie_index, rating, timestamp = (
            a[keep] for a in (user_index, movie_index, rating, timestamp)
        )
    return Interactions(user_ids, user_index, movie_index, rating, timestamp, movie_ids)
