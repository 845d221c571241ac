"""Tests for metrics/fusionrec_metrics: hand-computed cases, a loop reference, edge cases, evaluate.load."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusionrec.metrics.fusionrec_metrics import pad_ranked_lists, ranking_metrics, rating_rmse

METRIC_DIR = Path(__file__).resolve().parents[2] / "fusionrec" / "metrics" / "fusionrec_metrics"


# --------------------------------------------------------------------------- reference implementation
def brute_force_metrics(ranked, targets, k_values, num_movies=None) -> dict[str, float]:
    """Plain-Python loops over users and positions, written straight from PROTOCOL.md."""
    users = len(targets)
    out: dict[str, float] = {}
    for k in k_values:
        recall = ndcg = mrr = 0.0
        for row, target in zip(ranked, targets, strict=True):
            for position, movie in enumerate(list(row)[:k], start=1):
                if movie != -1 and movie == target:
                    recall += 1.0
                    ndcg += 1.0 / math.log2(position + 1)
                    mrr += 1.0 / position
                    break
        out[f"recall@{k}"] = recall / users if users else 0.0
        out[f"ndcg@{k}"] = ndcg / users if users else 0.0
        out[f"mrr@{k}"] = mrr / users if users else 0.0
        if num_movies is not None:
            seen = set()
            for row in ranked:
                for movie in list(row)[:k]:
                    if movie != -1:
                        seen.add(int(movie))
            out[f"coverage@{k}"] = len(seen) / num_movies
    out["num_users"] = users
    return out


def random_case(seed: int, users: int = 200, num_movies: int = 60, k_max: int = 25, pad: bool = False):
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(num_movies)[:k_max] for _ in range(users)]).astype(np.int64)
    targets = rng.integers(0, num_movies, size=users)
    if pad:  # shorter candidate lists, padded with -1 at the end
        lengths = rng.integers(0, k_max + 1, size=users)
        ranked[np.arange(k_max) >= lengths[:, None]] = -1
    return ranked, targets


def assert_metrics_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# --------------------------------------------------------------------------- hand-computed cases
def test_target_at_rank_3_hand_computed():
    ranked = np.array([[4, 8, 2, 9, 1]])
    out = ranking_metrics(ranked, np.array([2]), k_values=(1, 2, 3, 5))
    # rank 3: outside top 1 and top 2
    for k in (1, 2):
        assert out[f"recall@{k}"] == 0.0 and out[f"ndcg@{k}"] == 0.0 and out[f"mrr@{k}"] == 0.0
    # inside top 3 and top 5: ndcg = 1/log2(4) = 0.5, mrr = 1/3
    for k in (3, 5):
        assert out[f"recall@{k}"] == 1.0
        assert out[f"ndcg@{k}"] == pytest.approx(0.5)
        assert out[f"mrr@{k}"] == pytest.approx(1 / 3)
    assert out["num_users"] == 1


def test_three_users_hand_computed_means():
    ranked = np.array(
        [
            [7, 1, 2, 3],  # target 7 at rank 1: ndcg 1, mrr 1
            [0, 5, 6, 4],  # target 4 at rank 4: ndcg 1/log2(5) = 0.430677, mrr 0.25
            [3, 2, 1, 0],  # target 9 absent: 0
        ]
    )
    targets = np.array([7, 4, 9])
    out = ranking_metrics(ranked, targets, k_values=(2, 4), num_movies=10)
    assert out["recall@2"] == pytest.approx(1 / 3)
    assert out["ndcg@2"] == pytest.approx(1 / 3)
    assert out["mrr@2"] == pytest.approx(1 / 3)
    assert out["recall@4"] == pytest.approx(2 / 3)
    assert out["ndcg@4"] == pytest.approx((1.0 + 1.0 / math.log2(5)) / 3)
    assert out["ndcg@4"] == pytest.approx(0.4768925, abs=1e-6)
    assert out["mrr@4"] == pytest.approx((1.0 + 0.25) / 3)
    # top 2 shows {7, 1, 0, 5, 3, 2} = 6 of 10; top 4 shows {0..7} = 8 of 10
    assert out["coverage@2"] == pytest.approx(0.6)
    assert out["coverage@4"] == pytest.approx(0.8)
    assert out["num_users"] == 3
    assert list(out) == [
        "recall@2", "ndcg@2", "mrr@2", "coverage@2",
        "recall@4", "ndcg@4", "mrr@4", "coverage@4",
        "num_users",
    ]  # fmt: skip


def test_default_k_values_are_10_and_20():
    ranked = np.arange(30)[None, :]
    out = ranking_metrics(ranked, np.array([14]))  # rank 15: in top 20, not in top 10
    assert out["recall@10"] == 0.0 and out["recall@20"] == 1.0
    assert out["ndcg@20"] == pytest.approx(1 / math.log2(16)) == pytest.approx(0.25)
    assert out["mrr@20"] == pytest.approx(1 / 15)
    assert "coverage@10" not in out


# --------------------------------------------------------------------------- loop reference vs vectorised
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("pad", [False, True])
def test_matches_brute_force(seed, pad):
    ranked, targets = random_case(seed, pad=pad)
    k_values = (1, 5, 10, 20, 25, 40)  # 40 > K_max = 25
    expected = brute_force_metrics(ranked.tolist(), targets.tolist(), k_values, num_movies=60)
    actual = ranking_metrics(ranked, targets, k_values=k_values, num_movies=60)
    assert_metrics_close(actual, expected)
    assert 0 < actual["recall@25"] < 1  # the random case really exercises hits and misses


# --------------------------------------------------------------------------- edge cases
def test_target_absent_from_top_k_scores_zero():
    out = ranking_metrics(np.array([[1, 2, 3], [4, 5, 6]]), np.array([9, 8]), k_values=(3,))
    assert out == {"recall@3": 0.0, "ndcg@3": 0.0, "mrr@3": 0.0, "num_users": 2}


def test_k_larger_than_catalog_uses_what_is_there():
    ranked = np.array([[2, 0, 1], [1, 2, 0]])  # catalog of 3 movies, fully ranked
    out = ranking_metrics(ranked, np.array([1, 0]), k_values=(3, 50), num_movies=3)
    # ranks 3 and 3: ndcg = 1/log2(4) = 0.5, mrr = 1/3, both K give the same
    for k in (3, 50):
        assert out[f"recall@{k}"] == 1.0
        assert out[f"ndcg@{k}"] == pytest.approx(0.5)
        assert out[f"mrr@{k}"] == pytest.approx(1 / 3)
        assert out[f"coverage@{k}"] == 1.0


def test_zero_users_returns_zeros_without_nan():
    for ranked in (
        np.zeros((0, 10), dtype=np.int64),
        np.zeros((0, 0), dtype=np.int64),
        np.array([], dtype=int),
    ):
        out = ranking_metrics(ranked, np.array([], dtype=np.int64), num_movies=100)
        assert out["num_users"] == 0
        assert all(v == 0.0 and not math.isnan(v) for k, v in out.items() if k != "num_users")
        assert set(out) == {f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "coverage") for k in (10, 20)} | {
            "num_users"
        }


def test_empty_ranked_lists_with_users():
    out = ranking_metrics(np.zeros((2, 0), dtype=np.int64), np.array([0, 1]), k_values=(5,), num_movies=4)
    assert out == {"recall@5": 0.0, "ndcg@5": 0.0, "mrr@5": 0.0, "coverage@5": 0.0, "num_users": 2}


def test_minus_one_padding_never_hits_nor_covers():
    ranked = np.array([[3, -1, -1], [-1, -1, -1], [0, 1, -1]])
    targets = np.array([3, 2, 1])
    out = ranking_metrics(ranked, targets, k_values=(3,), num_movies=5)
    # user 0 rank 1, user 1 nothing, user 2 rank 2 (1/log2(3) = 0.6309298)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert out["mrr@3"] == pytest.approx((1 + 0.5) / 3)
    assert out["coverage@3"] == pytest.approx(3 / 5)  # {3, 0, 1}; -1 is not a movie


def test_coverage_counts_distinct_movies_per_k():
    ranked = np.array([[0, 1, 2], [0, 1, 3], [0, 4, 5]])
    out = ranking_metrics(ranked, np.array([0, 0, 0]), k_values=(1, 2, 3), num_movies=10)
    assert out["coverage@1"] == pytest.approx(0.1)  # {0}
    assert out["coverage@2"] == pytest.approx(0.3)  # {0, 1, 4}
    assert out["coverage@3"] == pytest.approx(0.6)  # {0, 1, 2, 3, 4, 5}


def test_first_occurrence_counts_and_inputs_not_modified():
    ranked = np.array([[5, 3, 3]], dtype=np.int32)
    targets = np.array([3], dtype=np.int32)
    before = ranked.copy()
    out = ranking_metrics(ranked, targets, k_values=(3,))
    assert out["mrr@3"] == pytest.approx(0.5)
    np.testing.assert_array_equal(ranked, before)


def test_lists_and_ragged_lists_are_accepted():
    out = ranking_metrics([[1, 2], [3]], [2, 3], k_values=(2,))
    assert out["recall@2"] == 1.0 and out["mrr@2"] == pytest.approx(0.75)
    padded = pad_ranked_lists([[1, 2, 3], [], [4]])
    np.testing.assert_array_equal(padded, [[1, 2, 3], [-1, -1, -1], [4, -1, -1]])
    assert padded.dtype == np.int64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ranked": np.array([[1.0, 2.0]]), "targets": np.array([1])}, "ranked must hold integer"),
        ({"ranked": np.array([[1, 2]]), "targets": np.array([1.0])}, "targets must hold integer"),
        ({"ranked": np.array([1, 2]), "targets": np.array([1, 2])}, "ranked must be a 2-D"),
        ({"ranked": np.array([[1, 2]]), "targets": np.array([[1]])}, "targets must be a 1-D"),
        (
            {"ranked": np.array([[1, 2], [3, 4]]), "targets": np.array([1])},
            "ranked has 2 rows but targets has 1",
        ),
        ({"ranked": np.array([[1, -2]]), "targets": np.array([1])}, "only -1 pads"),
        ({"ranked": np.array([[1, 2]]), "targets": np.array([-1])}, "targets holds -1"),
        (
            {"ranked": np.array([[1, 2]]), "targets": np.array([1]), "k_values": (0,)},
            "k_values must be positive",
        ),
        (
            {"ranked": np.array([[1, 2]]), "targets": np.array([1]), "k_values": (-3, 10)},
            "k_values must be positive",
        ),
        (
            {"ranked": np.array([[1, 2]]), "targets": np.array([1]), "k_values": ()},
            "k_values must not be empty",
        ),
        (
            {"ranked": np.array([[1, 2]]), "targets": np.array([1]), "k_values": (2.5,)},
            "k_values must contain",
        ),
        ({"ranked": np.array([[1, 2]]), "targets": np.array([1]), "num_movies": 0}, "num_movies must be"),
        (
            {"ranked": np.array([[1, 5]]), "targets": np.array([1]), "num_movies": 5},
            "ranked holds movie index 5",
        ),
        (
            {"ranked": np.array([[1, 2]]), "targets": np.array([7]), "num_movies": 5},
            "targets holds movie index 7",
        ),
    ],
)
def test_ranking_metrics_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ranking_metrics(**kwargs)


def test_single_int_k_value_is_accepted():
    out = ranking_metrics(np.array([[1, 2]]), np.array([2]), k_values=2)
    assert out["ndcg@2"] == pytest.approx(1 / math.log2(3))


# --------------------------------------------------------------------------- RMSE
def test_rating_rmse_hand_computed():
    # errors 1, 0, -2 -> mean square (1 + 0 + 4) / 3 = 5/3
    assert rating_rmse([4.0, 3.0, 1.0], [5.0, 3.0, 3.0]) == pytest.approx(math.sqrt(5 / 3))
    assert rating_rmse(np.array([3.5]), np.array([3.5])) == 0.0
    assert isinstance(rating_rmse([1, 2], [2, 2]), float)
    assert rating_rmse([1, 2], [2, 2]) == pytest.approx(math.sqrt(0.5))


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ([1.0, 2.0], [1.0], "does not match references shape"),
        ([], [], "empty"),
        ([1.0, float("nan")], [1.0, 2.0], "predictions contain NaN"),
        ([1.0, 2.0], [1.0, float("inf")], "references contain NaN"),
        (["a"], [1.0], "predictions must be numeric"),
    ],
)
def test_rating_rmse_errors(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        rating_rmse(predictions, references)


# --------------------------------------------------------------------------- the evaluate module
def test_metric_file_imports_are_one_per_line():
    """evaluate's import scanner misreads `import a, b`: it must see only the libraries the file uses."""
    from evaluate.loading import get_imports

    imports = get_imports(str(METRIC_DIR / "fusionrec_metrics.py"))
    assert {kind for kind, *_ in imports} == {"library"}
    assert {name for _, name, *_ in imports} == {"collections", "datasets", "evaluate", "numpy"}
    source = (METRIC_DIR / "fusionrec_metrics.py").read_text(encoding="utf-8")
    assert not [line for line in source.splitlines() if line.startswith("import ") and "," in line]


_EVALUATE_SCRIPT = r"""
import json
import sys

import evaluate
import numpy as np

path, case_file = sys.argv[1], sys.argv[2]
case = json.load(open(case_file))
out = {}
metric = evaluate.load(path)
out["features"] = str(metric.features)
out["has_docs"] = bool(metric.description and metric.citation and metric.inputs_description)
out["ragged"] = metric.compute(
    predictions=case["ragged"], references=case["targets"], k_values=case["k_values"], num_movies=case["num_movies"]
)
half = len(case["targets"]) // 2
metric.add_batch(predictions=case["ragged"][:half], references=case["targets"][:half])
metric.add_batch(predictions=case["ragged"][half:], references=case["targets"][half:])
out["batched"] = metric.compute(k_values=case["k_values"], num_movies=case["num_movies"])
out["array"] = metric.compute(
    predictions=np.array(case["padded"]), references=np.array(case["targets"]), num_movies=case["num_movies"]
)
out["zero"] = metric.compute(predictions=[], references=[], num_movies=case["num_movies"])
errors = {}
for name, kwargs in {
    "float_predictions": dict(predictions=[[1.5, 2.0]], references=[1]),
    "float_references": dict(predictions=[[1, 2]], references=[1.5]),
}.items():
    try:
        metric.compute(**kwargs)
        errors[name] = None
    except ValueError as exc:
        errors[name] = str(exc)
out["errors"] = errors
out["rmse"] = evaluate.load(path, "rmse").compute(predictions=case["rating_pred"], references=case["rating_true"])
try:
    evaluate.load(path, "bogus")
    out["bogus"] = None
except ValueError as exc:
    out["bogus"] = str(exc)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def evaluate_results(tmp_path_factory):
    """Run evaluate.load on the local module in a fresh offline process with its caches in a tmp dir."""
    tmp = tmp_path_factory.mktemp("evaluate")
    ranked, targets = random_case(11, users=40, num_movies=30, k_max=12, pad=True)
    ragged = [[int(m) for m in row if m != -1] for row in ranked]
    rng = np.random.default_rng(5)
    case = {
        "ragged": ragged,
        "padded": ranked.tolist(),
        "targets": targets.tolist(),
        "k_values": [1, 5, 10, 20],
        "num_movies": 30,
        "rating_pred": rng.uniform(0.5, 5.0, size=50).tolist(),
        "rating_true": rng.uniform(0.5, 5.0, size=50).tolist(),
    }
    case_file = tmp / "case.json"
    case_file.write_text(json.dumps(case))
    env = {
        **os.environ,
        "HF_HOME": str(tmp / "hf_home"),
        "HF_MODULES_CACHE": str(tmp / "hf_home" / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _EVALUATE_SCRIPT, str(METRIC_DIR), str(case_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return case, json.loads(line[len("RESULT ") :]), tmp


def test_evaluate_load_matches_function(evaluate_results):
    case, out, _ = evaluate_results
    ranked = np.array(case["padded"])
    targets = np.array(case["targets"])
    expected = ranking_metrics(ranked, targets, k_values=case["k_values"], num_movies=case["num_movies"])
    assert_metrics_close(out["ragged"], expected)
    assert_metrics_close(out["batched"], expected)
    assert_metrics_close(
        out["ragged"], brute_force_metrics(case["padded"], case["targets"], case["k_values"], 30)
    )
    assert_metrics_close(out["array"], ranking_metrics(ranked, targets, num_movies=case["num_movies"]))
    assert out["has_docs"]
    assert "int64" in out["features"]


def test_evaluate_zero_users_and_errors(evaluate_results):
    _, out, _ = evaluate_results
    assert out["zero"]["num_users"] == 0
    assert all(v == 0.0 for k, v in out["zero"].items() if k != "num_users")
    assert "predictions must be lists of integer" in out["errors"]["float_predictions"]
    assert "references must be integer" in out["errors"]["float_references"]
    assert "config_name must be one of" in out["bogus"]


def test_evaluate_rmse_config_matches_function(evaluate_results):
    case, out, _ = evaluate_results
    assert out["rmse"]["rmse"] == pytest.approx(
        rating_rmse(case["rating_pred"], case["rating_true"]), rel=1e-12
    )


def test_evaluate_wrote_only_to_tmp_cache(evaluate_results):
    _, _, tmp = evaluate_results
    assert (tmp / "hf_home" / "modules" / "evaluate_modules").is_dir()
