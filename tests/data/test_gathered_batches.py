"""Batches gathered by offset from flat columns. Training (`gather_windows`, `KeyedWindows`): the same windows and
targets as padding each window row by row, negatives drawn uniformly from the pool as log_q says, identical batches
for any number of DataLoader workers, text states gathered apart (on the device). Evaluation and export: example
histories, exclusions and "as of" cuts as flat views equal to the per-example ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrec.data.catalog import MovieCatalog
from fusionrec.data.collator import TrainingCollator, movie_frequency
from fusionrec.data.sequences import (
    SequenceRows,
    Sequences,
    UserSequence,
    evaluation_examples,
    gather_windows,
    history_until,
    pad_histories,
    training_windows,
)
from fusionrec.retrieval import ExactSearch, dated_user_vectors, prefix_user_vectors, user_vectors
from fusionrec.training.batches import EpochBatchSampler, KeyedWindows, built_batch


class _Config:
    use_content_features = True
    use_text = True
    max_history_length = 6


def _sequences(count: int = 40, *, seed: int = 0, num_movies: int = 30) -> list[UserSequence]:
    rng = np.random.default_rng(seed)
    sequences = []
    for user in range(count):
        length = int(rng.integers(0, 25))
        sequences.append(UserSequence(
            user + 1, rng.choice(num_movies, length, replace=False).astype(np.int64),
            rng.integers(1, 11, length).astype(np.float32) / 2, np.sort(rng.integers(0, 10**9, length)),
        ))  # fmt: skip
    return sequences


def _catalog(num_movies: int = 30, *, seed: int = 0) -> MovieCatalog:
    generator = torch.Generator().manual_seed(seed)
    catalog = MovieCatalog(
        numeric=torch.randn(num_movies, 2, generator=generator),
        categorical={"language": torch.randint(0, 5, (num_movies,), generator=generator)},
        multi_valued={"genres": torch.randint(0, 7, (num_movies, 3), generator=generator)},
        texts=[""] * num_movies, titles=[""] * num_movies, years=[None] * num_movies,
        cold_item=torch.zeros(num_movies, dtype=torch.bool), num_ratings=torch.zeros(num_movies, dtype=torch.long),
    )  # fmt: skip
    catalog.attach_text_cache(
        torch.randn(num_movies, 5, 4, generator=generator).half(), torch.randint(0, 6, (num_movies,), generator=generator)
    )
    return catalog


def _padded_row_by_row(windows: list[UserSequence], max_length: int) -> dict[str, list]:
    """The reference: each window padded on its own, the most recent `max_length` steps, context steps not targets."""
    length = max([min(len(w.movies), max_length) for w in windows] + [0])
    out = {name: [] for name in ("movies", "ratings", "timestamps", "mask", "target")}
    for window in windows:
        kept = slice(max(0, len(window.movies) - max_length), None)
        count, dropped = len(window.movies[kept]), max(0, len(window.movies) - max_length)
        pad = [0] * (length - count)
        out["movies"].append(window.movies[kept].tolist() + pad)
        out["ratings"].append(window.ratings[kept].tolist() + pad)
        out["timestamps"].append(window.timestamps[kept].tolist() + pad)
        out["mask"].append([True] * count + [False] * len(pad))
        out["target"].append([i >= window.context - dropped and i < count for i in range(length)])
    return out


@pytest.mark.parametrize("max_length", [7, 4])
def test_gathered_windows_match_padding_each_window_row_by_row(max_length):
    windows = training_windows(_sequences(), window=6)
    indices = torch.from_numpy(np.random.default_rng(1).permutation(len(windows))[:25])
    batch = gather_windows(windows, indices, max_length=max_length)
    expected = _padded_row_by_row([windows[int(i)] for i in indices], max_length)
    assert batch["history_movie_indices"].tolist() == expected["movies"]
    assert batch["history_ratings"].tolist() == expected["ratings"]
    assert batch["history_timestamps"].tolist() == expected["timestamps"]
    assert batch["history_mask"].tolist() == expected["mask"]
    assert batch["target_mask"].tolist() == expected["target"]
    assert batch["user_indices"].tolist() == [windows[int(i)].user_index for i in indices]
    assert batch["history_movie_indices"].dtype == torch.long and batch["history_ratings"].dtype == torch.float32
    assert (windows.context[indices] > 0).any() and (windows.lengths()[indices] > 4).any()  # 4: steps dropped


def test_collating_indices_of_flat_windows_equals_collating_the_window_list():
    windows = training_windows(_sequences(), window=6)
    catalog = _catalog()
    collate = TrainingCollator(catalog, config=_Config(), movie_frequency=movie_frequency(_sequences(), 30),
                               negative_pool=np.arange(30), num_negatives=8, seed=3)  # fmt: skip
    indices = torch.tensor([5, 0, 17, 3, 9])
    gathered = collate(windows, indices=indices, batch_key=(2, 7))
    listed = collate([windows[int(i)] for i in indices], batch_key=(2, 7))
    _assert_equal(gathered, listed)
    # The text states left out for the device: the rest is the same, and text_inputs adds exactly what was left out.
    deferred = TrainingCollator(catalog, config=_Config(), movie_frequency=movie_frequency(_sequences(), 30),
                                negative_pool=np.arange(30), num_negatives=8, seed=3, text_states=False)  # fmt: skip
    batch = deferred(windows, indices=indices, batch_key=(2, 7))
    assert "text_states" not in batch["movie_inputs"]
    batch["movie_inputs"].update(catalog.on_device("cpu").text_inputs(batch["movie_inputs"]["movie_indices"]))
    _assert_equal(batch, gathered)


def test_all_negatives_make_every_pool_movie_a_certain_candidate():
    catalog = _catalog()
    collate = TrainingCollator(catalog, config=_Config(), movie_frequency=np.arange(30) < 3, negative_pool=np.arange(10, 30),
                               num_negatives=None, seed=0, text_states=False)  # fmt: skip
    windows = Sequences.from_list([UserSequence(1, np.array([0, 1, 2]), np.ones(3, np.float32), np.arange(3))])
    inputs = collate(windows, indices=torch.tensor([0]), batch_key=(0, 0))["movie_inputs"]
    assert inputs["movie_indices"].tolist() == [0, 1, 2, *range(10, 30)]  # the window's movies and the whole pool
    assert torch.equal(inputs["log_q"], torch.zeros(23))  # a full softmax: nothing to correct


def test_negatives_are_uniform_over_the_pool_at_the_rate_log_q_assumes():
    # One window of movies outside the pool: every other candidate is a negative. Over many batch keys, each pool
    # movie is a candidate with probability 1 - (1 - 1/pool)^num_negatives, which is exp(log_q) for it.
    catalog = _catalog()
    pool = np.arange(10, 30)
    collate = TrainingCollator(catalog, config=_Config(), movie_frequency=np.arange(30) < 3, negative_pool=pool,
                               num_negatives=6, seed=0, text_states=False)  # fmt: skip
    windows = Sequences.from_list([UserSequence(1, np.array([0, 1, 2]), np.ones(3, np.float32), np.arange(3))])
    trials = 3000
    counts = np.zeros(30)
    for key in range(trials):
        inputs = collate(windows, indices=torch.tensor([0]), batch_key=(0, key))["movie_inputs"]
        counts[inputs["movie_indices"].numpy()] += 1
    expected = 1 - (1 - 1 / len(pool)) ** 6
    assert np.exp(inputs["log_q"][inputs["movie_indices"] >= 10].numpy()) == pytest.approx(expected, rel=1e-5)
    assert counts[3:10].sum() == 0 and (counts[:3] == trials).all()
    share = counts[pool] / trials
    spread = 4 * np.sqrt(expected * (1 - expected) / trials)  # 4 standard errors: fails on a skewed draw
    assert np.abs(share - expected).max() < spread, share


@pytest.mark.parametrize("workers", [1, 2])
def test_the_loader_gives_identical_batches_for_any_number_of_workers(workers):
    windows = training_windows(_sequences(60), window=6)
    collator = TrainingCollator(_catalog(), config=_Config(), movie_frequency=np.ones(30), negative_pool=np.arange(30),
                                num_negatives=8, seed=1, text_states=False)  # fmt: skip

    def epoch(num_workers: int) -> list[dict]:
        sampler = EpochBatchSampler(len(windows), batch_size=16, seed=4)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(KeyedWindows(windows, collator), batch_sampler=sampler,
                                             collate_fn=built_batch, num_workers=num_workers)  # fmt: skip
        return list(loader)

    alone, shared = epoch(0), epoch(workers)
    assert len(alone) == len(windows) // 16 >= 3 and len(shared) == len(alone)
    for one, other in zip(alone, shared, strict=True):
        _assert_equal(one, other)
    assert int(alone[0]["num_windows"]) == 16


def test_a_batch_of_two_batch_keys_is_refused():
    windows = training_windows(_sequences(), window=6)
    collator = TrainingCollator(_catalog(), config=_Config(), movie_frequency=np.ones(30), negative_pool=np.arange(30),
                                num_negatives=4, seed=1)  # fmt: skip
    with pytest.raises(RuntimeError, match="mixes batch keys"):
        KeyedWindows(windows, collator).__getitems__([(0, 0, 1), (0, 1, 2)])


def _rows(count: int = 50, *, seed: int = 0) -> SequenceRows:
    rng = np.random.default_rng(seed)
    rows = []
    for user, sequence in enumerate(_sequences(count, seed=seed)):
        n = len(sequence.movies)
        valid_start, test_start = sorted(rng.integers(0, n + 1, size=2).tolist())
        rows.append({
            "user_index": user + 1, "movie_index": sequence.movies.astype(np.int32), "rating": sequence.ratings,
            "timestamp": sequence.timestamps, "loo_valid_position": n - 2 if n >= 3 else -1,
            "loo_test_position": n - 1 if n >= 3 else -1, "temporal_valid_start": valid_start,
            "temporal_test_start": test_start,
        })  # fmt: skip
    return SequenceRows.from_dicts(rows)


@pytest.mark.parametrize("split", ["leave_one_out", "temporal", "cold_items"])
def test_example_histories_and_exclusions_as_flat_views_equal_the_per_example_ones(split):
    rows = _rows()
    cold = np.random.default_rng(1).random(30) < 0.3
    examples = evaluation_examples(rows, split, "test", cold)
    assert len(examples) > 20
    histories = examples.history_windows()
    for max_length in (50, 5):
        gathered = gather_windows(histories, np.arange(len(examples)), max_length=max_length)
        expected = pad_histories(list(examples.histories), max_length=max_length)
        _assert_equal(gathered, expected)
    part = slice(3, len(examples) - 2)
    example, movies = examples.exclusion_pairs(part)
    pairs = {(int(e), int(m)) for e, m in zip(example, movies, strict=True)}
    assert pairs == {(i, int(m)) for i, seen in enumerate(examples.exclusions(part)) for m in seen}
    users = torch.nn.functional.normalize(torch.randn(len(examples.exclusions(part)), 8), dim=-1)
    search = ExactSearch(torch.nn.functional.normalize(torch.randn(30, 8), dim=-1), examples.candidate_mask)
    listed, flat = search.search(users, examples.exclusions(part), 10), search.search_pairs(users, (example, movies), 10)
    assert np.array_equal(listed[0], flat[0]) and np.array_equal(listed[1], flat[1])


def test_sequences_cut_as_of_a_time_equal_cutting_each_history():
    rows = _rows()
    sequences = rows.sequences()
    times = np.random.default_rng(2).integers(0, 10**9, len(sequences))
    cut = sequences.until(times)
    for i, time in enumerate(times):
        reference = history_until(sequences[i], int(time))
        assert cut[i].movies.tolist() == reference.movies.tolist() and cut[i].user_index == reference.user_index
    assert (cut.lengths() < sequences.lengths()).any() and (cut.lengths() > 0).any()


def test_dated_user_vectors_from_one_encoding_equal_one_call_per_date():
    from tiny import tiny_config

    from modeling_fusionrec import FusionModel

    torch.manual_seed(0)
    model = FusionModel(tiny_config(num_movies=30, num_users=60, use_text=False, max_history_length=6)).eval()
    movie_vectors = torch.nn.functional.normalize(torch.randn(30, 32), dim=-1)
    sequences = _rows().sequences()
    rng = np.random.default_rng(3)
    as_of = np.stack([rng.integers(0, 10**9, len(sequences)), np.full(len(sequences), 6 * 10**8),
                      np.full(len(sequences), 2 * 10**9)], axis=1)  # fmt: skip
    dated = dated_user_vectors(model, sequences, movie_vectors, as_of=as_of, batch_size=16)
    for date in range(as_of.shape[1]):
        alone = user_vectors(model, sequences, movie_vectors, as_of=as_of[:, date], batch_size=16)
        torch.testing.assert_close(dated[:, date], alone, rtol=0, atol=1e-5)
    # both kinds occur: dates that only cut the end of the latest window, and long histories whose window moves
    window = [sequences.until(as_of[:, d]) for d in range(3)]
    moved = [np.maximum(w.starts, w.stops - 6) != np.maximum(window[2].starts, window[2].stops - 6) for w in window]
    assert moved[0].any() and (~moved[0] & (window[0].lengths() < window[2].lengths())).any()


def test_prefix_user_vectors_read_from_one_encoding_equal_each_history_encoded_alone():
    """A user's evaluation examples are prefixes of one history (cold_items: ~10 per user at 26M): those that fit the
    window are read from one encoding at their own lengths, in any order and across batch edges; the longer ones, and
    a read asked as of a later time, give the vectors of each history encoded alone."""
    from tiny import tiny_config

    from modeling_fusionrec import FusionModel

    torch.manual_seed(0)
    model = FusionModel(tiny_config(num_movies=30, num_users=60, use_text=False, max_history_length=6)).eval()
    movie_vectors = torch.nn.functional.normalize(torch.randn(30, 32), dim=-1)
    full = _rows().sequences()
    rng = np.random.default_rng(5)
    owner = rng.permutation(np.repeat(np.arange(len(full)), 4))  # four prefixes per history, shuffled
    cut = rng.integers(0, full.lengths()[owner] + 1)
    prefixes = full.subset(owner)
    prefixes.stops = prefixes.starts + cut
    assert (cut == 0).any() and (cut > 6).any() and ((cut <= 6) & (cut > 0)).any() and (full.lengths() == 0).any()
    shared = prefix_user_vectors(model, prefixes, movie_vectors, batch_size=16)
    torch.testing.assert_close(shared, user_vectors(model, prefixes, movie_vectors, batch_size=16), rtol=0, atol=1e-5)
    later = np.array([prefixes.timestamps[stop - 1] if stop > start else 0 for start, stop in
                      zip(prefixes.starts, prefixes.stops, strict=True)]) + rng.integers(1, 10**7, len(prefixes))  # fmt: skip
    torch.testing.assert_close(prefix_user_vectors(model, prefixes, movie_vectors, as_of=later, batch_size=7),
                               user_vectors(model, prefixes, movie_vectors, as_of=later, batch_size=16), rtol=0, atol=1e-5)

    class SavedBefore(FusionModel):  # the remote code of a checkpoint saved before history_lengths existed
        def calculate_user_feature(self, *, history_movie_indices, history_ratings, history_timestamps, history_mask,
                                   movie_vectors, user_indices=None, as_of=None):  # fmt: skip
            return super().calculate_user_feature(
                history_movie_indices=history_movie_indices, history_ratings=history_ratings, history_mask=history_mask,
                history_timestamps=history_timestamps, movie_vectors=movie_vectors, user_indices=user_indices, as_of=as_of)

    older = SavedBefore(model.config).eval()
    older.load_state_dict(model.state_dict())
    torch.testing.assert_close(prefix_user_vectors(older, prefixes, movie_vectors, batch_size=16), shared, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="history_lengths must be"):
        batch = gather_windows(full, torch.arange(3), max_length=6)
        batch.pop("target_mask")
        model.calculate_user_feature(**batch, movie_vectors=movie_vectors, history_lengths=torch.full((3, 1), 7))


def _assert_equal(one, other) -> None:
    if isinstance(one, dict):
        assert one.keys() == other.keys()
        for key in one:
            _assert_equal(one[key], other[key])
    else:
        assert one.dtype == other.dtype and torch.equal(one, other)
