"""The quality benchmark's pieces that decide its numbers: target ranks and per-example metrics, the bootstrap,
a peer's output as our record (rank base, depth, our metric code, the same-targets check), the head/tail split by
training counts, resuming finished records, ties, and the targets' arithmetic (T1 on untied targets, T2 time to
quality, T3 without post-release data, T4)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_quality  # noqa: E402
import quality_jobs as jobs  # noqa: E402
import quality_report as report  # noqa: E402

from fusionrec.data.sequences import EvaluationExamples, evaluation_examples  # noqa: E402
from fusionrec.metrics.fusionrec_metrics import ranking_metrics  # noqa: E402


def test_target_ranks_are_positions_or_minus_one():
    ranked = np.array([[3, 1, -1], [2, 5, 7], [9, 9, 9]])
    assert jobs.target_ranks(ranked, np.array([1, 9, 9])) == [1, -1, 0]


def test_ndcg_per_example_matches_the_metric_definition():
    values = jobs.ndcg_per_example([0, 1, 9, 10, -1])
    np.testing.assert_allclose(values, [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])
    ranked = np.array([[4, 2, 8], [1, 3, 5], [7, 6, 0]])
    targets = np.array([2, 9, 0])
    per_example = jobs.ndcg_per_example(jobs.target_ranks(ranked, targets), k=3)
    expected = ranking_metrics(ranked, targets, k_values=(3,))["ndcg@3"]
    assert per_example.mean() == pytest.approx(expected)


def test_depth_metrics_from_ranks_match_the_metric_module_on_deep_lists():
    rng = np.random.default_rng(1)
    ranked = np.stack([rng.permutation(300)[:100] for _ in range(50)])
    targets = rng.integers(0, 300, 50)
    expected = ranking_metrics(ranked, targets, k_values=(100,))
    got = jobs.rank_metrics(jobs.target_ranks(ranked, targets))
    assert got["recall@100"] == pytest.approx(expected["recall@100"]) and 0 < got["recall@100"] < 1
    assert got["ndcg@100"] == pytest.approx(expected["ndcg@100"])


def test_bootstrap_interval_covers_the_ratio_and_shrinks_with_more_users():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    low, high = report.bootstrap_ratio(2 * base, base, samples=500)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)  # paired: a constant ratio has no spread
    noisy = base + rng.normal(0, 0.3, 200)
    low, high = report.bootstrap_ratio(noisy, base, samples=2000)
    assert low < noisy.mean() / base.mean() < high and high - low > 0.05
    big = rng.random(20_000)
    big_low, big_high = report.bootstrap_ratio(big + rng.normal(0, 0.3, 20_000), big, samples=200)
    assert big_high - big_low < (high - low) / 4


def test_bootstrap_interval_carries_the_seed_spread():
    rng = np.random.default_rng(1)
    base = rng.random(2_000) + 0.5
    one_seed = report.bootstrap_ratio(np.stack([1.2 * base]), np.stack([base]), samples=1000)
    assert one_seed == pytest.approx((1.2, 1.2))
    seeds = np.stack([1.0 * base, 1.4 * base])  # the same users, two seeds far apart: the mean 1.2 is uncertain
    low, high = report.bootstrap_ratio(seeds, np.stack([base]), samples=1000)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.4)


def test_bootstrap_resamples_a_users_events_together():
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(40), 50)  # 40 users with 50 events each; the gain is the user's, not the event's
    theirs = 1.0 + rng.random(2_000)
    ours = theirs * (1.0 + np.repeat(rng.normal(0, 0.3, 40), 50))
    low, high = report.bootstrap_ratio(ours, theirs, samples=2000)
    clustered_low, clustered_high = report.bootstrap_ratio(ours, theirs, clusters=users, samples=2000)
    assert clustered_low < ours.mean() / theirs.mean() < clustered_high
    assert clustered_high - clustered_low > 3 * (high - low)  # 40 independent draws, not 2,000


def test_a_target_is_tied_when_it_shares_its_second_with_the_event_before_it():
    rows = [loo_row(7, [1, 2, 3]), loo_row(2, [4, 5, 6, 7])]
    rows[1]["timestamp"] = np.array([0, 5, 9, 9])  # user 2's test event in the same second as its validation event
    examples = evaluation_examples(rows, "leave_one_out", "test", np.zeros(10, dtype=bool))
    previous = bench_quality.previous_timestamps(examples)
    assert previous.tolist() == [1, 9]
    assert report.tied_with_previous(examples.target_timestamps, previous).tolist() == [False, True]


# ----- peers -----


def examples_of(pairs: list[tuple[int, int]]) -> EvaluationExamples:
    """Test examples with these (user_index, target) pairs; each history is one movie the user saw."""
    rows = [{"user_index": user, "movie_index": np.array([50 + i, target]), "rating": np.array([4.0, 4.0]),
             "timestamp": np.array([0, 1]), "loo_valid_position": 0, "loo_test_position": 1,
             "temporal_valid_start": 2, "temporal_test_start": 2} for i, (user, target) in enumerate(pairs)]  # fmt: skip
    return evaluation_examples(rows, "leave_one_out", "test", np.zeros(100, dtype=bool))


def peer_output(pairs, tops, ranks) -> dict:
    """A rectools_peer.py JSON with the fields the conversion reads (1-based ranks, as the peer writes them)."""
    return {
        "model": "sasrec", "split": "leave_one_out", "seed": 3, "settings": {"n_factors": 64}, "best_epoch": 2,
        "epochs_run": 3, "validation_curve_ndcg@10": [0.01, 0.03, 0.02],
        "validation_curve_cpu_seconds": [10.0, 20.0, 30.0], "validation": {"callback_ndcg@10": 0.03},
        "test_rectools_metrics": {}, "test_examples": [list(p) for p in pairs], "test_target_ranks": ranks,
        "test_top20": tops, "validation_target_ranks": [1, -1, 3], "rank_base": 1,
        "data": {"training_events": 9, "training_events_in_fit": 9, "training_movies": 5, "training_movies_in_fit": 5},
        "train_cpu_seconds": 35.0, "train_wall_seconds": 40.0, "versions": {},
    }


def test_peer_ranks_become_zero_based_with_minus_one_beyond_the_depth():
    assert jobs.ranks_from_peer([1, 2, 100, 101, -1], base=1, depth=100) == [0, 1, 99, -1, -1]
    assert jobs.ranks_from_peer([3, 5], base=1, depth=4) == [2, -1]
    with pytest.raises(jobs.PeerMismatch, match="below their base"):
        jobs.ranks_from_peer([0, 2], base=1)


def test_peer_record_metrics_equal_our_metric_module_on_the_same_lists():
    pairs = [(7, 3), (2, 11), (5, 40)]
    tops = [[9, 3, 4], [11, 1, 2, 5], [1, 2, 6]]  # user 5's target is beyond its top list: rank 57
    peer = peer_output(pairs, tops, ranks=[2, 1, 57])
    record = jobs.peer_record(peer, name="rectools_sasrec", examples=examples_of(pairs), num_movies=60,
                              config={"c": 1}, machine={})
    assert record["test_target_ranks"] == [1, 0, 56]
    expected = ranking_metrics(jobs.pad_ranked_lists([np.array(t) for t in tops]), np.array([3, 11, 40]),
                               k_values=(10, 20), num_movies=60)
    for name in ("recall@10", "ndcg@10", "mrr@10", "coverage@10", "recall@20", "ndcg@20", "mrr@20", "coverage@20"):
        assert record["metrics"][name] == pytest.approx(expected[name]), name
    assert record["metrics"]["recall@100"] == pytest.approx(1.0)
    assert record["metrics"]["ndcg@100"] == pytest.approx((1 / np.log2(3) + 1 + 1 / np.log2(58)) / 3)
    assert "rmse" not in record["metrics"]
    assert record["validation_curve"] == [[10.0, 0.01], [20.0, 0.03], [30.0, 0.02]]
    assert record["validation"]["ndcg@10"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert record["train"]["cpu_seconds_to_best_epoch"] == 20.0
    assert (record["model"], record["seed"], record["train_cpu_seconds"]) == ("rectools_sasrec", 3, 35.0)


def test_a_peer_rank_that_contradicts_its_top_list_is_an_error():
    pairs = [(7, 3), (2, 11)]
    peer = peer_output(pairs, [[9, 3], [11, 1]], ranks=[1, 1])  # 3 is second in user 7's list, not first
    with pytest.raises(jobs.PeerMismatch, match="disagree at row 0"):
        jobs.peer_record(peer, name="p", examples=examples_of(pairs), num_movies=20, config={}, machine={})


@pytest.mark.parametrize(
    ("theirs", "where"),
    [
        ([(7, 3), (2, 12), (5, 4)], "row 1: peer [user_index, target] [2, 12], ours [2, 11]"),
        ([(2, 11), (7, 3), (5, 4)], "row 0"),  # same pairs, other order
        ([(7, 3), (2, 11)], "2 vs 3"),  # one example missing
    ],
)
def test_the_same_targets_check_fails_loudly(theirs, where):
    ours = examples_of([(7, 3), (2, 11), (5, 4)])
    jobs.check_same_targets([list(p) for p in [(7, 3), (2, 11), (5, 4)]], ours, "rectools_sasrec")  # equal: passes
    with pytest.raises(jobs.PeerMismatch, match="rectools_sasrec: the peer's test examples differ") as error:
        jobs.check_same_targets([list(p) for p in theirs], ours, "rectools_sasrec")
    assert where in str(error.value)


# ----- head/tail -----


def loo_row(user: int, movies: list[int]) -> dict:
    n = len(movies)
    return {"user_index": user, "movie_index": np.array(movies), "rating": np.full(n, 4.0),
            "timestamp": np.arange(n), "loo_valid_position": n - 2 if n >= 3 else -1,
            "loo_test_position": n - 1 if n >= 3 else -1, "temporal_valid_start": n, "temporal_test_start": n}


class TinyCatalog:
    """What BenchData reads of a catalog for training counts: its size and cold movies (none)."""

    cold_item = torch.zeros(10, dtype=torch.bool)

    def __len__(self) -> int:
        return 10


def test_head_and_tail_split_by_training_counts_only():
    # movie 0: 32 training ratings (head); movie 1: 30 (tail, the limit); movie 2: only ever a validation or test
    # target (0 training ratings, tail); users with < 3 events train on everything.
    rows = [loo_row(u, [0, 1, 2, 2]) for u in range(30)] + [loo_row(30, [0, 9, 0])] + [loo_row(31, [0, 5])]
    rows.append(loo_row(32, [5, 6, 1]))
    data = jobs.BenchData(Path("."), {}, rows, TinyCatalog())
    counts = data.train_counts("leave_one_out")
    assert counts[:3].tolist() == [32, 30, 0] and counts[5] == 2 and counts[9] == 0
    tail = report.tail_mask(counts, data.examples("leave_one_out", "test").targets)
    assert tail.tolist() == [True] * 30 + [False, True]  # targets: movie 2 x 30, movie 0, movie 1


def record(model, seed, ranks, *, split="leave_one_out", curve=(), cpu=None):
    return {"model": model, "split": split, "seed": seed, "test_target_ranks": list(ranks),
            "metrics": {"ndcg@10": float(jobs.ndcg_per_example(ranks).mean())}, "validation_curve": [list(p) for p in curve],
            "train_cpu_seconds": cpu}


def test_head_tail_table_and_t4_pick_the_best_peer_per_slice():
    tail = np.array([True, True, False, False])
    records = [
        record("fusion_full", 0, [5, 50, 1, 2]),
        record("fusion_ids", 0, [-1, 50, 1, 2]),  # tail: full 2/2 vs ids 1/2 -> x2.00; head level
        record("rectools_sasrec", 0, [5, -1, 1, 2]),  # tail 1/2, head 2/2
        record("rectools_bert4rec", 0, [-1, -1, 1, -1]),  # tail 0/2, head 1/2
    ]
    lines = report.target_t4(records, report.Context(splits=("leave_one_out",), tail=tail))
    assert lines[0].endswith("PASS") and "2 of 4 test users" in lines[0]
    assert "vs best peer by tail Recall@100 rectools_sasrec 0.5000 -> x2.00" in lines[2]
    assert "head Recall@100: fusion_full 1.0000 vs fusion_ids 1.0000 -> x1.00" in lines[3]
    records[0]["test_target_ranks"] = [5, 50, 1, -1]  # head: now below both
    assert report.target_t4(records, report.Context(splits=("leave_one_out",), tail=tail))[0].endswith("FAIL")
    without_peers = [r for r in records if not r["model"].startswith("rectools")]
    assert report.target_t4(without_peers, report.Context(splits=("leave_one_out",), tail=tail))[0].endswith("not run")
    table = report.head_tail_table(records, tail)
    assert "tail share 50.0%" in table and "rectools_bert4rec" in table


def test_t1_compares_fusion_full_with_the_best_peer_on_all_and_on_untied_targets():
    records = [record("fusion_full", s, [0, 0, 3, -1]) for s in (0, 1)]
    records += [record("rectools_sasrec", s, [0, 1, 3, -1]) for s in (0, 1)]
    records += [record("rectools_bert4rec", 0, [1, -1, -1, -1]), record("ease", 0, [-1, -1, -1, 0])]
    context = report.Context(splits=("leave_one_out",), tail=None, tied=np.array([False, True, False, False]))
    lines = report.target_t1(records, context)
    assert "(rectools_sasrec, " in lines[0] and lines[0].endswith("FAIL")  # the lead is all on the tied target
    sasrec = (1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4
    full = (2 + 1 / np.log2(5)) / 4
    assert lines[1].startswith("    all:") and f"x{full / sasrec:.2f}" in lines[1] and lines[1].endswith("PASS")
    assert lines[2].startswith("    untied (3 users):") and "-> x1.00" in lines[2] and lines[2].endswith("FAIL")
    assert lines[3].startswith("    tied (1 users):") and lines[3].endswith("(for information)")
    assert any("fusion_full vs ease" in line for line in lines[4:])
    context = report.Context(splits=("leave_one_out",), tail=None, tied=np.array([True, False, False, False]))
    assert report.target_t1(records, context)[0].endswith("PASS")  # now the untied targets carry the lead
    table = report.ties_table(records, context.tied)
    assert "1 of 4 test targets" in table and "rectools_bert4rec" in table


def test_popularity_table_splits_the_untied_targets_into_quartiles_of_training_ratings():
    tied = np.array([False] * 8 + [True])
    counts = np.array([1, 2, 10, 20, 30, 40, 100, 200, 5])  # untied quartile edges 8, 25, 55
    records = [record("fusion_full", 0, [0, -1, -1, -1, -1, -1, -1, 0, 0]), record("ease", 0, [-1, 1, 0, 0, 0, 0, 0, 0, 0])]
    lines = report.popularity_table(records, counts, tied).splitlines()
    assert "<= 8" in lines[1] and "> 55" in lines[1]
    full = next(line for line in lines if line.startswith("fusion_full")).split()
    ease = next(line for line in lines if line.startswith("ease")).split()
    assert [float(v) for v in full[1::3]] == [0.5, 0.0, 0.0, 0.5]  # the tied hit (count 5) is left out
    assert [float(v) for v in ease[1::3]] == pytest.approx([1 / np.log2(3) / 2, 1.0, 1.0, 1.0], abs=1e-4)


def test_length_table_says_which_runs_validation_ended_and_which_reached_the_cap():
    records = [record("fusion_full", s, [0, -1]) for s in (0, 1)] + [record("ease", 0, [0, -1])]
    records[0]["train"] = {"steps": 900, "best_step": 650, "stopped_early": True}
    records[1]["train"] = {"steps": 1740, "best_step": 1740, "stopped_early": False}
    lines = report.length_table(records, report.Context(splits=("leave_one_out",), tail=None)).splitlines()
    assert len(lines) == 2 and lines[1].split()[:5] == ["fusion_full", "leave_one_out", "1", "of", "2"]
    assert lines[1].endswith("900 (best 650), 1740 (best 1740)")


def test_t3_is_without_post_release_data_and_labels_what_uses_it():
    cold = dict(split="cold_items")
    records = [record("fusion_full", 0, [0, 2, 5, -1], **cold), record("most_popular", 0, [-1, 9, -1, -1], **cold),
               record("most_voted_tmdb", 0, [0, 0, 1, 1], **cold), record("content_knn", 0, [1, 2, 5, -1], **cold)]
    records[0]["with_post_release"] = {"test_target_ranks": [0, 0, 0, 1]}
    context = report.Context(splits=("cold_items",), tail=None, num_cold_candidates=40, users={"cold_items": np.array([1, 1, 2, 3])})
    lines = report.target_t3(records, context)
    assert "without post-release features" in lines[0] and "most_popular" in lines[0] and lines[0].endswith("PASS")
    full = (1 + 1 / np.log2(4) + 1 / np.log2(7)) / 4
    knn = (1 / np.log2(3) + 1 / np.log2(4) + 1 / np.log2(7)) / 4
    assert "content_knn" in lines[1] and f"-> x{full / knn:.2f}" in lines[1] and lines[1].endswith("FAIL")  # < 1.5
    labelled = [line for line in lines if report.POST_RELEASE_LABEL in line]
    assert len(labelled) == 3 and sum("most_voted_tmdb" in line for line in labelled) == 2
    snapshot = next(line for line in labelled if "most_voted" not in line)
    assert f"{(3 + 1 / np.log2(3)) / 4:.4f}" in snapshot
    voted = (2 + 2 / np.log2(3)) / 4
    assert f"x{full / voted:.2f} most_voted_tmdb" in labelled[-1]


def test_content_knn_ranks_by_cosine_to_the_rating_weighted_profile_without_post_release_data():
    from fusionrec.data.catalog import MovieCatalog
    from fusionrec.data.sequences import UserSequence

    rng = np.random.default_rng(0)
    states = torch.tensor(rng.normal(size=(6, 4, 3)), dtype=torch.float16)
    lengths = torch.tensor([4, 2, 3, 4, 1, 4])
    genres = torch.tensor([[2, 3], [2, 0], [4, 0], [3, 4], [0, 0], [2, 4]])
    numeric = torch.tensor(rng.normal(size=(6, 2)), dtype=torch.float32)
    catalog = MovieCatalog(numeric=numeric, categorical={}, multi_valued={"genres": genres}, texts=[""] * 6,
                           titles=[""] * 6, years=[None] * 6, cold_item=torch.zeros(6, dtype=torch.bool),
                           num_ratings=torch.zeros(6, dtype=torch.long), text_states=states, text_lengths=lengths)
    history = UserSequence(0, np.array([0, 3]), np.array([5.0, 2.0], np.float32), np.array([1, 2]))
    scores = jobs.ContentKnn(catalog).fit(genre_weight=1.0, weighting="rating").scores([history])[0]

    def unit(vector):
        return vector / np.linalg.norm(vector)

    text = [unit(states[i, : lengths[i]].double().mean(0).numpy()) for i in range(6)]
    multi_hot = np.zeros((6, 5))
    for movie, bag in enumerate(genres.numpy()):
        multi_hot[movie, bag[bag > 1]] = 1.0
    vectors = [unit(np.concatenate((text[i], unit(multi_hot[i]) if multi_hot[i].any() else multi_hot[i])))
               for i in range(6)]
    profile = unit(5.0 * vectors[0] + 2.0 * vectors[3])
    np.testing.assert_allclose(scores, [profile @ v for v in vectors], atol=1e-6)
    centered = jobs.ContentKnn(catalog).fit(genre_weight=0.0, weighting="centered").scores([history])[0]
    np.testing.assert_allclose(centered, [unit(text[0] - text[3]) @ t for t in text], atol=1e-6)
    catalog.numeric = torch.full_like(numeric, float("nan"))  # votes, popularity, ...: never read
    np.testing.assert_array_equal(jobs.ContentKnn(catalog).fit(genre_weight=1.0, weighting="rating").scores([history])[0],
                                  scores)


def test_a_peer_that_missed_training_events_or_movies_stops_the_benchmark():
    jobs.check_fed_everything({"training_events": 10, "training_events_in_fit": 10, "training_movies": 4,
                               "training_movies_in_fit": 4}, "p")
    with pytest.raises(jobs.PeerMismatch, match="saw 6 of the 10 training events"):
        jobs.check_fed_everything({"training_events": 10, "training_events_in_fit": 6, "training_movies": 4,
                                   "training_movies_in_fit": 4}, "p")
    with pytest.raises(jobs.PeerMismatch, match="saw None of the None training events"):
        jobs.check_fed_everything({}, "p")  # a peer that does not say what it saw


# ----- T2: time to quality -----


def test_cpu_to_reach_is_the_first_point_at_or_above_the_threshold():
    curve = [(100, 0.01), (200, 0.04), (300, 0.05), (400, 0.03), (500, 0.06)]
    assert report.cpu_to_reach(curve, 0.05) == 300
    assert report.cpu_to_reach(curve, 0.055) == 500
    assert report.cpu_to_reach(curve, 0.07) is None
    assert report.cpu_at_best(curve) == 500 and report.cpu_at_best([(1, 0.2), (2, 0.2)]) == 1


def test_t2_uses_the_best_peer_by_validation_and_its_training_cpu():
    peer = [record("rectools_sasrec_cat", s, [0], curve=[(100, 0.02), (600, v), (900, v - 0.01)], cpu=1000)
            for s, v in ((0, 0.05), (1, 0.07))]  # V = 0.06, C = 1000, best epoch at 600 CPU-s
    weak = [record("rectools_sasrec", 0, [0], curve=[(50, 0.03)], cpu=100)]
    full = [record("fusion_full", 0, [0], curve=[(100, 0.04), (300, 0.061), (400, 0.07)], cpu=800),
            record("fusion_full", 1, [0], curve=[(200, 0.0601), (500, 0.08)], cpu=800)]
    lines = report.target_t2(peer + weak + full)
    assert "rectools_sasrec_cat" in lines[0] and "V=0.0600" in lines[0] and "C=1000 CPU-s" in lines[0]
    assert "reaches V at 250 CPU-s (seeds: 300, 200) -> 0.25 x C" in lines[0] and lines[0].endswith("PASS")
    assert "own best epoch at 600 CPU-s" in lines[1]
    full[1]["validation_curve"] = [[200, 0.05], [500, 0.059]]
    lines = report.target_t2(peer + weak + full)
    assert "never reaches V in seed(s) [1]" in lines[0] and lines[0].endswith("FAIL")
    full[1]["validation_curve"] = [[200, 0.05], [900, 0.0601]]  # reached, but too late: mean 600 > 500
    assert report.target_t2(peer + weak + full)[0].endswith("FAIL")


# ----- resuming -----


def test_finished_records_resume_only_with_the_same_settings(tmp_path):
    config = {"model": "ease", "split": "leave_one_out", "seed": 0, "rank_depth": 100}
    done = {**record("ease", 0, [1, -1]), "job": config}
    assert jobs.finished_records(tmp_path, ("ease",), "leave_one_out", 0, config=config, num_test=2) is None
    jobs.write_record(tmp_path, done)
    assert jobs.finished_records(tmp_path, ("ease",), "leave_one_out", 0, config=config, num_test=2) == [done]
    assert jobs.finished_records(tmp_path, ("ease",), "leave_one_out", 0, config={**config, "rank_depth": 20},
                                 num_test=2) is None
    assert jobs.finished_records(tmp_path, ("ease",), "leave_one_out", 0, config=config, num_test=3) is None
    other = tmp_path / "other"
    reused = {("ease", "leave_one_out", 0): done}
    assert jobs.finished_records(other, ("ease",), "leave_one_out", 0, config=config, num_test=2, reused=reused) == [done]
    assert json.loads(jobs.record_path(other, "ease", "leave_one_out", 0).read_text()) == done  # copied in
    both = ("fusion_full", jobs.TARGET_TIME)  # a job with two records is finished only with both
    jobs.write_record(tmp_path, {**done, "model": "fusion_full"})
    assert jobs.finished_records(tmp_path, both, "leave_one_out", 0, config=config, num_test=2) is None


def test_a_fusion_record_made_before_a_default_changed_is_not_resumed(monkeypatch):
    import argparse

    import configuration_fusionrec
    from fusionrec.training import options

    args = argparse.Namespace(steps=None, **{name: None for name in jobs.TRAINING_OPTIONS})
    before = jobs.fusion_config("fusion_full", "leave_one_out", 0, args)
    assert before == jobs.fusion_config("fusion_full", "leave_one_out", 0, args)
    assert "--movie-id-dropout" not in before["train_accelerate_argv"]  # a default the argv does not name

    build_parser = options.build_parser

    def other_patience():
        parser = build_parser()
        parser.set_defaults(patience=7)
        return parser

    monkeypatch.setattr(options, "build_parser", other_patience)
    assert jobs.fusion_config("fusion_full", "leave_one_out", 0, args) != before
    monkeypatch.undo()
    init = configuration_fusionrec.FusionRecConfig.__init__
    other = configuration_fusionrec.FusionRecConfig().movie_id_dropout / 2
    monkeypatch.setattr(configuration_fusionrec.FusionRecConfig, "__init__",
                        lambda self, **kwargs: init(self, **{"movie_id_dropout": other, **kwargs}))
    assert jobs.fusion_config("fusion_full", "leave_one_out", 0, args) != before


def test_a_record_made_before_a_result_neutral_default_changed_is_still_finished(tmp_path):
    import argparse

    args = argparse.Namespace(steps=None, **{name: None for name in jobs.TRAINING_OPTIONS})
    config = jobs.fusion_config("fusion_full", "leave_one_out", 0, args)
    trainer = config["defaults"]["train_accelerate"]  # a job at the code's old behaviour: stride = window, no average
    trainer["window_stride"], trainer["weight_average_decay"] = trainer["max_history_length"], 0.0
    old = json.loads(json.dumps(config))
    old["defaults"]["config"]["custom_pipelines"] = {"movie-recommendation": {"impl": "elsewhere.Pipeline"}}
    old["defaults"]["train_accelerate"].pop("dataloader_num_workers", None)  # an option added since
    for name in ("lr_decay_patience", "lr_decay_factor", "lr_cooldown_fraction"):  # inert under the default scheduler
        old["defaults"]["train_accelerate"].pop(name)
    assert old["defaults"]["train_accelerate"].pop("full_determinism") is False  # added since, off as before it
    assert old["defaults"]["train_accelerate"].pop("logq_correction") is None  # added since; None defers to the config
    assert old["defaults"]["train_accelerate"].pop("compile") is False  # added since, off as the code before it
    old["defaults"]["train_accelerate"].pop("compile_backend")  # acts only under --compile
    old["defaults"]["train_accelerate"]["window_stride"] = None  # None: each window all targets, as a stride = window
    assert old["defaults"]["train_accelerate"].pop("weight_average_decay") == 0.0  # added since, off as before it
    assert old["defaults"]["train_accelerate"].pop("score_function") is None  # added since; None: the config's
    assert old["defaults"]["config"].pop("score_function") == "cosine"  # a config field added since, at its old way
    jobs.write_record(tmp_path, {"model": "fusion_full", "split": "leave_one_out", "seed": 0, "job": old,
                                 "test_target_ranks": [0, 1]})
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0, config=config, num_test=2)
    for scheduler in ("plateau", "wsd"):  # where they act, a record without them is not the job's
        args.lr_scheduler = scheduler
        acting = jobs.fusion_config("fusion_full", "leave_one_out", 0, args)
        assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0, config=acting, num_test=2) is None
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0, config=config, num_test=2)
    args.lr_scheduler, args.logq_correction = None, 0.5  # given, it is not the record's job
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0,
                                 config=jobs.fusion_config("fusion_full", "leave_one_out", 0, args), num_test=2) is None
    args.logq_correction, args.score_function = None, "dot"
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0,
                                 config=jobs.fusion_config("fusion_full", "leave_one_out", 0, args), num_test=2) is None
    args.score_function = None
    old["defaults"]["train_accelerate"]["patience"] = -1  # a setting that changes the numbers
    jobs.write_record(tmp_path, {"model": "fusion_full", "split": "leave_one_out", "seed": 0, "job": old,
                                 "test_target_ranks": [0, 1]})
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0, config=config, num_test=2) is None


def test_a_record_is_the_job_that_sets_the_same_options_given_or_by_default(tmp_path):
    """A screen run with an option given at the value that later becomes its default is the default run: records
    compare the options as they take effect, not the command lines."""
    import argparse

    args = argparse.Namespace(steps=None, **{name: None for name in jobs.TRAINING_OPTIONS})
    default = jobs.fusion_config("fusion_full", "leave_one_out", 0, args)
    args.patience = default["defaults"]["train_accelerate"]["patience"]  # given, at the default's value
    explicit = jobs.fusion_config("fusion_full", "leave_one_out", 0, args)
    assert "--patience" in explicit["train_accelerate_argv"] and "--patience" not in default["train_accelerate_argv"]
    jobs.write_record(tmp_path, {"model": "fusion_full", "split": "leave_one_out", "seed": 0, "job": explicit,
                                 "test_target_ranks": [0, 1]})
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0, config=default, num_test=2)
    args.patience += 1
    assert jobs.finished_records(tmp_path, ("fusion_full",), "leave_one_out", 0,
                                 config=jobs.fusion_config("fusion_full", "leave_one_out", 0, args), num_test=2) is None


def test_window_strides_that_make_every_step_a_target_are_one_setting():
    import argparse

    def settings(**given):
        args = argparse.Namespace(steps=None, **{name: given.get(name) for name in jobs.TRAINING_OPTIONS})
        return jobs.result_settings(jobs.fusion_config("fusion_full", "leave_one_out", 0, args))

    window = settings()["defaults"]["train_accelerate"]["max_history_length"]
    assert settings(window_stride=window) == settings(window_stride=window + 7)  # at least the window: every step once
    assert settings(window_stride=window - 1) != settings(window_stride=window)
    assert settings(max_history_length=40, window_stride=45) == settings(max_history_length=40, window_stride=40)


def test_report_only_reports_the_finished_records_and_runs_no_child_job(sample_data_dir, tmp_path, capsys):
    import bench_quality

    workdir = tmp_path / "bq"
    argv = ["--data-dir", str(sample_data_dir), "--workdir", str(workdir), "--models", "most_popular", "fusion_ids",
            "--splits", "leave_one_out", "--seeds", "0", "--no-snapshot", "--report-only",
            "--output", str(tmp_path / "quality.json")]  # fmt: skip
    records = bench_quality.main(argv)
    out = capsys.readouterr().out
    assert [(r["model"], r["seed"]) for r in records] == [("most_popular", 0)]
    assert (tmp_path / "quality_report.txt").is_file()
    assert "--report-only: not run, so not in the report: fusion_ids leave_one_out seed 0" in out
    assert not list(workdir.glob("logs/*")) and not (workdir / "runs").exists()  # no child job started
    assert sorted(p.name for p in (workdir / "records").iterdir()) == ["most_popular-leave_one_out-seed0.json"]
    with pytest.raises(SystemExit):
        bench_quality.main(["--report-only", "--models", "most_popular"])
    assert "--report-only reads the records of a --workdir" in capsys.readouterr().err


def test_the_text_cache_line_tells_a_build_timed_now_from_one_read_back_from_the_workdir():
    import bench_quality

    timing = {"texts": 3, "encoder": "enc", "max_length": 32, "texts_encoded": 3, "cpu_seconds": 12.0,
              "wall_seconds": 6.0, "torch_threads": 2}  # fmt: skip
    assert bench_quality.text_cache_line(timing, built_now=True).endswith("built 3 in 12 CPU-s (6 s wall, 2 torch "
                                                                          "threads) in this invocation")
    assert "by an earlier invocation" in bench_quality.text_cache_line(timing, built_now=False)
    assert "warm, loaded" in bench_quality.text_cache_line({**timing, "texts_encoded": 0}, built_now=False)


def test_the_franchise_probe_marks_the_last_movies_collection_and_its_bonus_lifts_only_those():
    import probe_franchise as probe

    collections = np.array([0, 2, 2, 1, 1, 3, 0])  # 0: no collection, 1: the rare ones pooled: neither is a match
    same = probe.same_collection_as_last(collections, np.array([1, 3, 6]))
    assert same.tolist() == [[False, True, True, False, False, False, False], [False] * 7, [False] * 7]
    examples = type("Examples", (), {"targets": np.array([2]), "__len__": lambda self: 1,
                                     "exclusions": lambda self, rows: [np.array([1])]})()  # fmt: skip
    scores = np.array([[0.9, 0.8, 0.1, 0.5, 0.4, 0.3, 0.2]])
    assert probe.ranks_with_bonus(scores, same[:1], 0.0, examples).tolist() == [5]
    assert probe.ranks_with_bonus(scores, same[:1], 1.0, examples).tolist() == [0]  # movie 1 was rated: excluded
