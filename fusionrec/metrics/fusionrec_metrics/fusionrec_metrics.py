"""fusionrec ranking and rating metrics, as plain numpy functions and as an `evaluate` metric module.

The functions follow the fusionrec evaluation protocol (full ranking over the whole catalog, one relevant
movie per user): Recall@K (equal to HitRate@K with one relevant item), NDCG@K (1 / log2(rank + 1), rank
1-based), MRR@K and catalog coverage@K, plus RMSE for the rating head.

This file is self-contained on purpose (numpy, evaluate and datasets only, one module per `import`
statement): `evaluate.load("fusionrec/metrics/fusionrec_metrics")` copies this single file into its module
cache and scans its `import` statements, and that scanner misreads `import a, b`.
"""

from collections.abc import Iterable, Sequence

import datasets
import evaluate
import numpy as np

PAD_INDEX = -1
DEFAULT_K_VALUES = (10, 20)
RANKING_CONFIGS = ("default", "ranking")
RMSE_CONFIG = "rmse"

_CITATION = """\
@inproceedings{kang2018sasrec,
  title     = {Self-Attentive Sequential Recommendation},
  author    = {Kang, Wang-Cheng and McAuley, Julian},
  booktitle = {IEEE International Conference on Data Mining (ICDM)},
  year      = {2018}
}
@inproceedings{krichene2020sampled,
  title     = {On Sampled Metrics for Item Recommendation},
  author    = {Krichene, Walid and Rendle, Steffen},
  booktitle = {KDD},
  year      = {2020}
}
"""

_DESCRIPTION = """\
Full-ranking top-K metrics for next-item recommendation with one relevant item per user
(leave-one-out): Recall@K (= HitRate@K), NDCG@K = 1/log2(rank+1), MRR@K = 1/rank (0 beyond K) and
catalog coverage@K (distinct movies in any user's top K / catalog size). Predictions are the model's
ranked movie indices over the full catalog (never sampled negatives); -1 pads short lists.
The "rmse" configuration computes the root mean squared error of predicted ratings instead.
"""

_KWARGS_DESCRIPTION = """\
Args (configuration "default" or "ranking"):
    predictions (`list` of `list` of `int`): per user, movie indices in rank order, best first. Rows may
        have different lengths; -1 is padding and never counts as a hit or towards coverage.
    references (`list` of `int`): per user, the one relevant (held-out) movie index.
    k_values (`tuple` of `int`, optional, default (10, 20)): cut-offs K, each > 0. A K larger than a
        ranked list uses what is there.
    num_movies (`int`, optional): catalog size; when given, coverage@K is reported.
Returns:
    `dict`: "recall@K", "ndcg@K", "mrr@K" (and "coverage@K" with num_movies) for each K, as floats in
    [0, 1] averaged over users, plus "num_users". With zero users every metric is 0.0.

Args (configuration "rmse"):
    predictions (`list` of `float`): predicted ratings.
    references (`list` of `float`): true ratings.
Returns:
    `dict`: {"rmse": float}. Empty or non-finite inputs raise ValueError.

Examples:
    >>> metric = evaluate.load("fusionrec/metrics/fusionrec_metrics")
    >>> metric.compute(predictions=[[5, 2, 7], [1, 3, -1]], references=[7, 4], k_values=[1, 3])
    {'recall@1': 0.0, 'ndcg@1': 0.0, 'mrr@1': 0.0, 'recall@3': 0.5, 'ndcg@3': 0.25, 'mrr@3': 0.16666666666666666, 'num_users': 2}
    >>> rmse = evaluate.load("fusionrec/metrics/fusionrec_metrics", "rmse")
    >>> rmse.compute(predictions=[4.0, 3.0], references=[5.0, 3.0])
    {'rmse': 0.7071067811865476}
"""


def _check_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
    """Validate the cut-offs: a non-empty collection of positive integers (order kept, duplicates dropped)."""
    if isinstance(k_values, (int, np.integer)) and not isinstance(k_values, bool):
        k_values = (k_values,)
    try:
        values = list(k_values)
    except TypeError:
        raise ValueError(f"k_values must be an iterable of positive integers, got {k_values!r}") from None
    if not values:
        raise ValueError("k_values must not be empty")
    checked: list[int] = []
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k_values must contain integers, got {k!r} ({type(k).__name__})")
        if k <= 0:
            raise ValueError(f"k_values must be positive, got {int(k)}")
        if int(k) not in checked:
            checked.append(int(k))
    return tuple(checked)


def pad_ranked_lists(ranked_lists: Sequence[Sequence[int]], pad_value: int = PAD_INDEX) -> np.ndarray:
    """Stack ranked lists of possibly different lengths into a (U, K_max) int64 array padded with -1."""
    if isinstance(ranked_lists, np.ndarray) and ranked_lists.dtype != object:
        return ranked_lists
    rows = [np.asarray(row).reshape(-1) for row in ranked_lists]
    if not rows:
        return np.zeros((0, 0), dtype=np.int64)
    for row in rows:
        if row.size and not np.issubdtype(row.dtype, np.integer):
            raise ValueError(f"ranked must hold integer movie indices, got dtype {row.dtype}")
    lengths = np.array([row.size for row in rows], dtype=np.int64)
    out = np.full((len(rows), int(lengths.max())), pad_value, dtype=np.int64)
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.concatenate(rows).astype(np.int64, copy=False)
    return out


def _check_integer_inputs(predictions, references) -> None:
    """Raise ValueError when ranked lists or targets for the ranking metric are not integers."""
    if predictions is not None and len(predictions):
        if isinstance(predictions, np.ndarray) and predictions.dtype != object:
            dtype = predictions.dtype
        else:
            dtypes = {arr.dtype for arr in (np.asarray(row) for row in predictions) if arr.size}
            dtype = next((d for d in dtypes if not np.issubdtype(d, np.integer)), np.dtype(np.int64))
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(f"predictions must be lists of integer movie indices, got dtype {dtype}")
    if references is not None and len(references):
        dtype = np.asarray(references).dtype
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(f"references must be integer movie indices, got dtype {dtype}")


def ranking_metrics(
    ranked: np.ndarray,
    targets: np.ndarray,
    *,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    num_movies: int | None = None,
) -> dict[str, float]:
    """Recall@K, NDCG@K, MRR@K (and coverage@K with `num_movies`) for one relevant movie per user.

    Args:
        ranked: (U, K_max) integer movie indices in rank order, best first; -1 pads short rows. Rows may be
            shorter than some K (small catalog): a K beyond the row uses what is there.
        targets: (U,) integer relevant movie index per user.
        k_values: cut-offs K, each a positive integer.
        num_movies: catalog size; when given, "coverage@K" = distinct movies in any top K / num_movies.

    Returns:
        {"recall@K", "ndcg@K", "mrr@K", ["coverage@K"]} for each K (means over users) and "num_users".
        A target absent from the top K scores 0; zero users gives 0.0 for every metric.
    """
    ks = _check_k_values(k_values)
    if isinstance(ranked, (list, tuple)):
        try:
            ranked = np.asarray(ranked)
        except ValueError:
            ranked = pad_ranked_lists(ranked)
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim == 1 and ranked.size == 0:
        ranked = ranked.reshape(0, 0)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-D (num_users, K_max) array, got shape {ranked.shape}")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must hold integer movie indices, got dtype {ranked.dtype}")
    if targets.ndim != 1:
        raise ValueError(f"targets must be a 1-D (num_users,) array, got shape {targets.shape}")
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must hold integer movie indices, got dtype {targets.dtype}")
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(
            f"ranked has {ranked.shape[0]} rows but targets has {targets.shape[0]} entries; "
            "expected one ranked list per target"
        )
    ranked = ranked.astype(np.int64, copy=False)
    targets = targets.astype(np.int64, copy=False)
    if ranked.size and ranked.min() < PAD_INDEX:
        raise ValueError(f"ranked holds {int(ranked.min())}; movie indices are >= 0 and only -1 pads")
    if targets.size and targets.min() < 0:
        raise ValueError(f"targets holds {int(targets.min())}; movie indices must be >= 0")
    if num_movies is not None:
        if isinstance(num_movies, bool) or not isinstance(num_movies, (int, np.integer)) or num_movies <= 0:
            raise ValueError(f"num_movies must be a positive integer, got {num_movies!r}")
        num_movies = int(num_movies)
        if ranked.size and ranked.max() >= num_movies:
            raise ValueError(f"ranked holds movie index {int(ranked.max())} >= num_movies={num_movies}")
        if targets.size and targets.max() >= num_movies:
            raise ValueError(f"targets holds movie index {int(targets.max())} >= num_movies={num_movies}")

    num_users = ranked.shape[0]
    hits = ranked == targets[:, None]  # targets >= 0, so -1 padding never matches
    # 1-based rank of the first hit; a sentinel beyond every K when the target is absent
    rank = np.full(num_users, np.iinfo(np.int64).max, dtype=np.int64)
    if hits.shape[1]:  # argmax needs a non-empty axis (no columns: nothing is ranked, nothing is hit)
        found = hits.any(axis=1)
        rank[found] = hits.argmax(axis=1)[found] + 1
    rank_f = rank.astype(np.float64)

    result: dict[str, float] = {}
    for k in ks:
        in_top = rank <= k
        if num_users:
            result[f"recall@{k}"] = float(in_top.mean())
            result[f"ndcg@{k}"] = float(np.where(in_top, 1.0 / np.log2(rank_f + 1.0), 0.0).mean())
            result[f"mrr@{k}"] = float(np.where(in_top, 1.0 / rank_f, 0.0).mean())
        else:
            result[f"recall@{k}"] = result[f"ndcg@{k}"] = result[f"mrr@{k}"] = 0.0
        if num_movies is not None:
            top = ranked[:, :k]
            shown = np.bincount(top[top >= 0], minlength=num_movies)
            result[f"coverage@{k}"] = float(np.count_nonzero(shown) / num_movies)
    result["num_users"] = num_users
    return result


def rating_rmse(predictions: np.ndarray | Sequence[float], references: np.ndarray | Sequence[float]) -> float:
    """Root mean squared error between predicted and true ratings.

    Raises ValueError when the shapes differ, the inputs are empty, or either holds NaN/inf, so the
    result is never NaN.
    """
    try:
        pred = np.asarray(predictions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("predictions must be numeric ratings") from None
    try:
        ref = np.asarray(references, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("references must be numeric ratings") from None
    if pred.shape != ref.shape:
        raise ValueError(f"predictions shape {pred.shape} does not match references shape {ref.shape}")
    if pred.size == 0:
        raise ValueError("predictions and references are empty; RMSE needs at least one rating")
    if not np.isfinite(pred).all():
        raise ValueError("predictions contain NaN or infinite values")
    if not np.isfinite(ref).all():
        raise ValueError("references contain NaN or infinite values")
    return float(np.sqrt(np.mean(np.square(pred - ref))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FusionrecMetrics(evaluate.Metric):
    """fusionrec full-ranking metrics ("default"/"ranking" configuration) and rating RMSE ("rmse")."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == RMSE_CONFIG:
            features = datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            )
        elif self.config_name in RANKING_CONFIGS:
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            )
        else:
            raise ValueError(
                f"config_name must be one of {RANKING_CONFIGS + (RMSE_CONFIG,)}, got {self.config_name!r}"
            )
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=[
                "https://arxiv.org/abs/1808.09781",
                "https://dl.acm.org/doi/10.1145/3394486.3403226",
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Check ranking inputs are integers before `datasets` silently casts floats to int64."""
        if self.config_name != RMSE_CONFIG:
            _check_integer_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Check one ranking example is integer before `datasets` silently casts floats to int64."""
        if self.config_name != RMSE_CONFIG:
            _check_integer_inputs(
                None if prediction is None else [prediction], None if reference is None else [reference]
            )
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        k_values: Iterable[int] = DEFAULT_K_VALUES,
        num_movies: int | None = None,
    ) -> dict[str, float]:
        if self.config_name == RMSE_CONFIG:
            return {"rmse": rating_rmse(predictions, references)}
        ranked = pad_ranked_lists(predictions)
        targets = np.asarray(references, dtype=np.int64).reshape(-1)
        return ranking_metrics(ranked, targets, k_values=k_values, num_movies=num_movies)
