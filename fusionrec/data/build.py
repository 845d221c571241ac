"""The tables of a prepared dataset, built two ways: fresh from the source files, or on --update from the previous
folder grown by the new files (every existing index, vocabulary entry and statistic kept). Both hand prepare.py the
same Tables, so the spec, card and writer do not care which ran."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fusionrec.data.reading import stage
from fusionrec.data.splits import build_interactions, choose_cold_items, temporal_cutoffs
from fusionrec.data.tables import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MIN_COUNT,
    build_movies_table,
    build_sequences_table,
    encode_movies,
    feature_vocabularies,
    missing_values,
    numeric_matrix,
    numeric_statistics,
)
from fusionrec.data.update import (
    PreviousDataset,
    added_tokens,
    lineage,
    merge_ratings,
    new_extra_records,
    stored_movies,
    updated_cold_items,
)
from fusionrec.errors import PrepareError


def merge_options(defaults: dict[str, int], given: dict[str, int] | None, what: str) -> dict[str, int]:
    """Per-feature settings: the defaults, then "all" (every feature), then named features; unknown names stop."""
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if key == "all":
            merged = dict.fromkeys(merged, int(value))
            continue
        if key not in merged:
            raise PrepareError(
                f"unknown feature {key!r} for {what}; choose from {', '.join(merged)} or 'all'"
            )
        merged[key] = int(value)
    return merged



SPLIT_DEFAULTS = {"loo_min_interactions": 3, "temporal_quantile": 0.9, "cold_fraction": 0.1, "cold_min_interactions": 5}
SPLIT_OPTIONS = {
    "loo_min_interactions": ("--loo-min-interactions", ("leave_one_out", "min_interactions")),
    "temporal_quantile": ("--temporal-quantile", ("temporal", "quantile")),
    "cold_fraction": ("--cold-fraction", ("cold_items", "fraction")),
    "cold_min_interactions": ("--cold-min-interactions", ("cold_items", "min_interactions")),
    "cold_seed": ("--cold-seed", ("cold_items", "seed")),
}


@dataclass
class Settings:
    """The split and vocabulary settings of a run: the options (or their defaults), or on --update the previous
    folder's, so that indices and splits mean the same in both folders."""

    source: str
    splits: dict[str, Any]
    min_counts: dict[str, int]
    max_lengths: dict[str, int]


def fresh_settings(source: str | None, given: dict[str, Any], min_counts, max_lengths, seed: int) -> Settings:
    splits = {name: given[name] if given.get(name) is not None else value for name, value in SPLIT_DEFAULTS.items()}
    splits["cold_seed"] = seed if given.get("cold_seed") is None else given["cold_seed"]
    return Settings(
        source=source or "synthetic",
        splits=splits,
        min_counts=merge_options(DEFAULT_MIN_COUNT, min_counts, "--min-count"),
        max_lengths=merge_options(DEFAULT_MAX_LENGTH, max_lengths, "--max-length"),
    )


def previous_settings(previous: dict[str, Any], folder: Path, source, given: dict[str, Any], min_counts, max_lengths) -> Settings:
    """The previous folder's settings; an option that asks for a different value stops the run."""
    splits = {name: previous["splits"][group][key] for name, (_, (group, key)) in SPLIT_OPTIONS.items()}
    mins = {n: f["min_count"] for part in ("categorical_features", "multi_valued_features") for n, f in previous[part].items()}
    maxes = {n: f["max_length"] for n, f in previous["multi_valued_features"].items()}
    asked = [(SPLIT_OPTIONS[name][0], value, splits[name]) for name, value in given.items() if value is not None]
    asked += [("--source", source, previous["source"])] if source is not None else []
    for option, stored, wanted in (("--min-count", mins, min_counts), ("--max-length", maxes, max_lengths)):
        merged = merge_options(stored, wanted, option)
        asked += [(option, f"{name}={merged[name]}", f"{name}={stored[name]}") for name in stored]
    for option, value, kept in asked:
        if value != kept:
            raise PrepareError(
                f"{option} {value} differs from {folder}'s {kept}: an update keeps the previous folder's source, "
                "split and vocabulary settings; drop the option"
            )
    return Settings(source=previous["source"], splits=splits, min_counts=mins, max_lengths=maxes)


@dataclass
class Tables:
    """What both paths (fresh, update) hand to the spec and the writer."""

    movies: pa.Table
    sequences: pa.Table
    inter: Any
    features: dict[str, Any]
    cutoffs: tuple[int, int]
    num_cold: int
    counts: dict[str, int]
    lineage: dict[str, Any] | None = None


def fresh_tables(data, settings: Settings, skipped: Counter, timings: dict[str, float]) -> Tables:
    with stage("order + deduplicate", timings):
        inter = build_interactions(data.ratings, skipped)
        data.ratings = None
    num_users = int(inter.user_ids.size) + 1
    records = [data.records[int(m)] for m in inter.movie_ids] + list(data.extra_records)
    splits = settings.splits
    with stage("splits", timings):
        num_ratings = np.bincount(inter.movie_index, minlength=len(records))
        cold = choose_cold_items(num_ratings, splits["cold_fraction"], splits["cold_min_interactions"], splits["cold_seed"])
        cutoffs = temporal_cutoffs(inter.timestamp, splits["temporal_quantile"])
        sequences = build_sequences_table(inter, num_users, splits["loo_min_interactions"], cutoffs)
    with stage("encode movies", timings):
        movies, features = build_movies_table(records, num_ratings, cold, settings.min_counts, settings.max_lengths)
    counts = {
        "movies_rated": int(inter.movie_ids.size),
        "movies_with_metadata": int(sum(r.has_metadata for r in records)),
    }
    return Tables(movies, sequences, inter, features, cutoffs, int(cold.sum()), counts)


def updated_tables(previous: PreviousDataset, data, settings: Settings, skipped: Counter, timings) -> Tables:
    """The previous folder's tables grown by the new files (fusionrec/data/update.py)."""
    with stage("merge with previous", timings):
        merged = merge_ratings(previous, data.ratings, skipped)
        data.ratings = None
    inter = merged.interactions
    added = [data.records[int(m)] for m in merged.new_movie_ids]
    added += new_extra_records(previous, added, list(data.extra_records))
    num_movies = previous.num_movies + len(added)
    num_users = int(inter.user_ids.size) + 1
    splits = settings.splits
    with stage("splits", timings):
        num_ratings = np.bincount(inter.movie_index, minlength=num_movies)
        cold = updated_cold_items(
            previous, num_ratings,
            {"fraction": splits["cold_fraction"], "min_interactions": splits["cold_min_interactions"], "seed": splits["cold_seed"]},
        )  # fmt: skip
        cutoffs = temporal_cutoffs(inter.timestamp, splits["temporal_quantile"])
        sequences = build_sequences_table(inter, num_users, splits["loo_min_interactions"], cutoffs)
    with stage("encode movies", timings):
        spec = previous.spec
        features = feature_vocabularies(added, settings.min_counts, settings.max_lengths, previous=spec)
        numeric = numeric_statistics(numeric_matrix(added))
        features["numeric_features"] = {
            **spec["numeric_features"],
            "missing": {k: v + numeric["missing"][k] for k, v in spec["numeric_features"]["missing"].items()},
        }
        features["missing_values"] = {k: v + missing_values(added)[k] for k, v in spec["missing_values"].items()}
        rows = encode_movies(added, features, num_ratings[previous.num_movies :], cold[previous.num_movies :],
                             first_index=previous.num_movies)  # fmt: skip
        movies = pa.concat_tables([stored_movies(previous, num_ratings, cold).cast(rows.schema), rows])
    counts = {
        "movies_rated": int((num_ratings > 0).sum()),
        "movies_with_metadata": int(spec["counts"]["movies_with_metadata"]) + sum(r.has_metadata for r in added),
    }
    merged.counts["movies_added"] = len(added)
    history = lineage(previous, merged.counts, added_tokens(spec, features))
    return Tables(movies, sequences, inter, features, cutoffs, int(cold.sum()), counts, history)
