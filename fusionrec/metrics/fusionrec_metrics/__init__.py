"""Ranking and rating metrics; also loadable with `evaluate.load("fusionrec/metrics/fusionrec_metrics")`."""

from .fusionrec_metrics import pad_ranked_lists, ranking_metrics, rating_rmse

__all__ = ["pad_ranked_lists", "ranking_metrics", "rating_rmse"]
