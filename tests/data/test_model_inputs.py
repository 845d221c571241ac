"""Pure data transforms between the prepared dataset and the model: splits, windows, padding, negatives, text cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import save_tiny_t5

from fusionrec.data.catalog import MovieCatalog
from fusionrec.data.collator import TrainingCollator, movie_frequency
from fusionrec.data.loading import load_feature_spec
from fusionrec.data.sequences import (
    UserSequence,
    evaluation_examples,
    pad_histories,
    train_sequence,
    training_windows,
)
from fusionrec.data.text_cache import build_text_cache
from fusionrec.errors import DatasetError


def row(movies, *, temporal_valid_start=None, temporal_test_start=None) -> dict:
    n = len(movies)
    return {
        "user_index": 3,
        "movie_index": np.asarray(movies, dtype=np.int32),
        "rating": np.arange(1, n + 1, dtype=np.float32) / 2,
        "timestamp": np.arange(n, dtype=np.int64) * 100 + 1_000,
        "loo_valid_position": n - 2 if n >= 3 else -1,
        "loo_test_position": n - 1 if n >= 3 else -1,
        "temporal_valid_start": n if temporal_valid_start is None else temporal_valid_start,
        "temporal_test_start": n if temporal_test_start is None else temporal_test_start,
    }


COLD = np.array([False, False, True, False, False, True, False, False])


def test_leave_one_out_training_and_evaluation_follow_the_protocol():
    user = row([4, 1, 3, 0, 6])
    assert train_sequence(user, "leave_one_out", COLD).movies.tolist() == [4, 1, 3]
    validation = evaluation_examples([user], "leave_one_out", "validation", COLD)
    test = evaluation_examples([user], "leave_one_out", "test", COLD)
    assert validation.targets.tolist() == [0] and validation.histories[0].movies.tolist() == [4, 1, 3]
    assert test.targets.tolist() == [6] and test.histories[0].movies.tolist() == [4, 1, 3, 0]
    assert test.target_ratings.tolist() == [2.5] and test.target_timestamps.tolist() == [1_400]
    short = row([4, 1])
    assert train_sequence(short, "leave_one_out", COLD).movies.tolist() == [4, 1]
    assert len(evaluation_examples([short], "leave_one_out", "test", COLD)) == 0


def test_temporal_split_uses_markers_and_never_leaks_the_future():
    user = row([4, 1, 3, 0, 6, 7], temporal_valid_start=3, temporal_test_start=5)
    assert train_sequence(user, "temporal", COLD).movies.tolist() == [4, 1, 3]
    validation = evaluation_examples([user], "temporal", "validation", COLD)
    test = evaluation_examples([user], "temporal", "test", COLD)
    assert (validation.targets.tolist(), validation.histories[0].movies.tolist()) == ([0], [4, 1, 3])
    assert (test.targets.tolist(), test.histories[0].movies.tolist()) == ([7], [4, 1, 3, 0, 6])
    no_test = row([4, 1, 3], temporal_valid_start=3, temporal_test_start=3)
    assert len(evaluation_examples([no_test], "temporal", "test", COLD)) == 0


def test_cold_items_remove_cold_movies_from_histories_and_rank_among_cold_movies():
    user = row([4, 2, 1, 5, 3, 0, 6])
    assert train_sequence(user, "cold_items", COLD).movies.tolist() == [4, 1, 3]
    test = evaluation_examples([user], "cold_items", "test", COLD)
    assert test.targets.tolist() == [2, 5]
    assert [h.movies.tolist() for h in test.histories] == [[4], [4, 1]]
    assert test.candidate_mask.tolist() == COLD.tolist()
    assert [e.tolist() for e in test.exclusions()] == [[4], [1, 2, 4]]  # the earlier cold movie 2 is seen too
    validation = evaluation_examples([user], "cold_items", "validation", COLD)
    assert validation.targets.tolist() == [0] and validation.candidate_mask is None


def test_unknown_split_or_stage_is_one_clear_error():
    with pytest.raises(DatasetError, match="unknown split 'random'"):
        train_sequence(row([1, 2, 3]), "random", COLD)
    with pytest.raises(DatasetError, match="unknown stage"):
        evaluation_examples([row([1, 2, 3])], "leave_one_out", "train", COLD)


def test_training_windows_make_every_step_a_target_once_with_a_full_history_before_the_last():
    sequence = UserSequence(1, np.arange(10), np.ones(10, np.float32), np.arange(10))
    windows = training_windows([sequence], window=4)
    assert [w.movies.tolist() for w in windows] == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5], [0, 1]]
    assert [w.context for w in windows] == [1, 1, 0]
    targets = np.concatenate([w.movies[w.context :] for w in windows])
    assert sorted(targets.tolist()) == list(range(10))
    # 5 = window + 1 steps fit one window: no second window repeats step 0
    assert [w.movies.tolist() for w in training_windows([UserSequence(1, np.arange(5), np.ones(5, np.float32), np.arange(5))], window=4)] == [[0, 1, 2, 3, 4]]
    batch = pad_histories(windows, max_length=5)
    assert batch["target_mask"].tolist() == [[False, True, True, True, True], [False, True, True, True, True],
                                             [True, True, False, False, False]]


def test_a_shorter_window_stride_gives_every_target_more_context_and_each_step_once():
    sequence = UserSequence(1, np.arange(10), np.ones(10, np.float32), np.arange(10))
    windows = training_windows([sequence], window=4, stride=2)
    assert [w.movies.tolist() for w in windows] == [[5, 6, 7, 8, 9], [3, 4, 5, 6, 7], [1, 2, 3, 4, 5], [0, 1, 2, 3]]
    assert [w.movies[w.context :].tolist() for w in windows] == [[8, 9], [6, 7], [4, 5], [0, 1, 2, 3]]
    for length in range(1, 30):
        for window, stride in ((4, 4), (4, 1), (6, 4), (7, 3)):
            steps = np.arange(length)
            windows = training_windows([UserSequence(1, steps, np.ones(length, np.float32), steps)], window=window, stride=stride)
            targets = np.concatenate([w.movies[w.context :] for w in windows])
            assert sorted(targets.tolist()) == list(range(length))
            assert all(len(w.movies) <= window + 1 and (w.context == 0 or w.context == window + 1 - stride) for w in windows)
    assert [w.context for w in training_windows([sequence], window=4, stride=4)] == [1, 1, 0]  # the default's windows
    with pytest.raises(ValueError, match="stride must be between 1 and the window"):
        training_windows([sequence], window=4, stride=5)


def test_pad_histories_keeps_the_most_recent_steps_right_padded():
    sequences = [UserSequence(2, np.arange(5), np.full(5, 4.0, np.float32), np.arange(5) + 10), UserSequence(1, np.arange(2), np.ones(2, np.float32), np.arange(2))]
    batch = pad_histories(sequences, max_length=3)
    assert batch["history_movie_indices"].tolist() == [[2, 3, 4], [0, 1, 0]]
    assert batch["history_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["history_timestamps"][0].tolist() == [12, 13, 14] and batch["user_indices"].tolist() == [2, 1]
    empty = pad_histories([UserSequence(0, np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))], max_length=3)
    assert empty["history_mask"].shape == (1, 0)


class _Config:
    use_content_features = False
    use_text = False
    max_history_length = 4


def test_collator_candidates_cover_the_batch_and_log_q_follows_frequency():
    catalog = MovieCatalog(
        numeric=torch.zeros(8, 0), categorical={}, multi_valued={}, texts=[""] * 8, titles=[""] * 8, years=[None] * 8,
        cold_item=torch.zeros(8, dtype=torch.bool), num_ratings=torch.zeros(8, dtype=torch.long),
    )
    sequences = [UserSequence(1, np.array([0, 1, 2]), np.ones(3, np.float32), np.arange(3)), UserSequence(2, np.array([0, 3]), np.ones(2, np.float32), np.arange(2))]
    frequency = movie_frequency(sequences, 8)
    assert frequency.tolist() == [2, 1, 1, 1, 0, 0, 0, 0]
    collate = TrainingCollator(catalog, config=_Config(), movie_frequency=frequency, negative_pool=np.arange(4, 8), num_negatives=2, seed=0)
    batch = collate(sequences)
    candidates = batch["movie_inputs"]["movie_indices"]
    assert set(range(4)) <= set(candidates.tolist()) and torch.equal(candidates, torch.unique(candidates))
    log_q = dict(zip(candidates.tolist(), batch["movie_inputs"]["log_q"].tolist(), strict=True))
    negative = next(i for i in candidates.tolist() if i >= 4)
    assert log_q[0] > log_q[1] == log_q[2] == log_q[3] and all(value < 0 for value in log_q.values())
    expected_negative = np.log(1 - (1 - 1 / 4) ** 2)
    assert log_q[negative] == pytest.approx(expected_negative, rel=1e-6)
    assert log_q[0] == pytest.approx(np.log(1 - (1 - 2 / 5) ** 5), rel=1e-6)


def test_log_q_counts_every_step_of_a_window_context_included():
    """A window's context steps are candidates as much as its targets, so the in-batch inclusion probability is
    taken over all the batch's steps: with half of each window context, counting targets alone would halve it."""
    catalog = MovieCatalog(
        numeric=torch.zeros(8, 0), categorical={}, multi_valued={}, texts=[""] * 8, titles=[""] * 8, years=[None] * 8,
        cold_item=torch.zeros(8, dtype=torch.bool), num_ratings=torch.zeros(8, dtype=torch.long),
    )
    sequence = UserSequence(1, np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]), np.ones(10, np.float32), np.arange(10))
    windows = training_windows([sequence], window=4, stride=2)
    frequency = movie_frequency([sequence], 8)
    collate = TrainingCollator(catalog, config=_Config(), movie_frequency=frequency, negative_pool=np.arange(4, 8), num_negatives=2, seed=0)
    batch = collate(windows)
    steps, targets = int(batch["history_mask"].sum()), int(batch["target_mask"].sum())
    assert steps > targets
    log_q = dict(zip(batch["movie_inputs"]["movie_indices"].tolist(), batch["movie_inputs"]["log_q"].tolist(), strict=True))
    assert log_q[3] == pytest.approx(np.log(1 - (1 - 2 / 10) ** steps), rel=1e-6)
    assert log_q[0] == pytest.approx(np.log(1 - (1 - 3 / 10) ** steps), rel=1e-6)


def test_text_cache_encodes_each_text_once_and_is_reused(tmp_path):
    encoder_dir = save_tiny_t5(tmp_path / "t5")
    texts = ["a spy story", "a cowboy doll", "a spy story"]
    states, lengths = build_text_cache(texts, cache_root=tmp_path / "cache", encoder_name=str(encoder_dir), revision=None, max_length=16, show_progress=False)
    assert states.shape[:2] == (3, 16) and states.dtype == torch.float16
    assert torch.equal(states[0], states[2]) and lengths[0] == lengths[2]
    cache_files = list((tmp_path / "cache").rglob("states.safetensors"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns
    again, _ = build_text_cache(texts[:2], cache_root=tmp_path / "cache", encoder_name=str(encoder_dir), revision=None, max_length=16, show_progress=False)
    assert torch.equal(again, states[:2]) and cache_files[0].stat().st_mtime_ns == stamp
    more, _ = build_text_cache(["a new heist"] + texts, cache_root=tmp_path / "cache", encoder_name=str(encoder_dir), revision=None, max_length=16, show_progress=False)
    assert torch.equal(more[1:], states)


def test_missing_feature_spec_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="feature_spec.json: not found"):
        load_feature_spec(tmp_path)


def reference_examples(row: dict, split: str, stage: str, cold: np.ndarray) -> list[tuple[list, int]]:
    """(history movies, target) per example, one user at a time, straight from PROTOCOL.md."""
    movies, n = row["movie_index"].tolist(), len(row["movie_index"])
    warm = [p for p in range(n) if not cold[movies[p]]]
    if split == "leave_one_out":
        position = row["loo_valid_position" if stage == "validation" else "loo_test_position"]
        return [(movies[:position], movies[position])] if position >= 0 else []
    if split == "temporal":
        start = row["temporal_valid_start" if stage == "validation" else "temporal_test_start"]
        end = row["temporal_test_start"] if stage == "validation" else n
        return [(movies[:start], movies[start])] if start < end else []
    if stage == "validation":
        return [([movies[p] for p in warm[:-2]], movies[warm[-2]])] if len(warm) >= 3 else []
    return [([movies[q] for q in warm if q < p], movies[p]) for p in range(n) if cold[movies[p]]]


def test_column_wise_splits_windows_and_examples_match_a_per_user_reference():
    rng = np.random.default_rng(0)
    cold = rng.random(30) < 0.25
    rows = []
    for _ in range(60):
        n = int(rng.integers(0, 25))
        valid_start, test_start = sorted(rng.integers(0, n + 1, size=2).tolist())
        rows.append(row(rng.permutation(30)[:n], temporal_valid_start=valid_start, temporal_test_start=test_start))
        rows[-1]["user_index"] = len(rows)
    for split in ("leave_one_out", "temporal", "cold_items"):
        for stage in ("validation", "test"):
            examples = evaluation_examples(rows, split, stage, cold)
            expected = [example for r in rows for example in reference_examples(r, split, stage, cold)]
            assert [(h.movies.tolist(), int(t)) for h, t in zip(examples.histories, examples.targets, strict=True)] == expected
        train = [train_sequence(r, split, cold) for r in rows]
        reference = [[e[0] + [e[1]] for e in reference_examples(r, split, "validation", cold)] for r in rows]
        for sequence, r, before_validation in zip(train, rows, reference, strict=True):
            if split != "temporal" and before_validation:  # training stops before the validation target
                assert sequence.movies.tolist() == before_validation[0][:-1]
            assert sequence.user_index == r["user_index"]
        windows = training_windows(train, window=4)
        per_user = [w for s in train for w in training_windows([s], window=4)]
        assert [(w.user_index, w.movies.tolist(), w.context) for w in windows] == [
            (w.user_index, w.movies.tolist(), w.context) for w in per_user
        ]
        assert windows.num_targets() == sum(len(s.movies) for s in train)  # every step a target exactly once
        targets = sorted((w.user_index, int(t)) for w in windows for t in w.timestamps[w.context :])
        assert targets == sorted((s.user_index, int(t)) for s in train for t in s.timestamps)
