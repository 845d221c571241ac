"""The source-independent movie record every source fills (tmdb, movielens, synthetic), the feature names it
carries, and what a source hands to `prepare()`: ratings columns, records by movie id, files read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fusionrec.data.parsing import year_bucket
from fusionrec.data.reading import RatingsColumns

NUMERIC_FEATURES = [
    "log_budget",
    "log_revenue",
    "runtime",
    "popularity",
    "vote_average",
    "log_vote_count",
    "year",
]
NUMERIC_TRANSFORMS = {
    "log_budget": "log1p(budget); budget <= 0 is unknown (NaN)",
    "log_revenue": "log1p(revenue); revenue <= 0 is unknown (NaN)",
    "runtime": "minutes; runtime <= 0 is unknown (NaN)",
    "popularity": "log1p(popularity) (TMDB popularity is heavy-tailed)",
    "vote_average": "as is; NaN when vote_count <= 0",
    "log_vote_count": "log1p(vote_count)",
    "year": "release year",
}
# Behaviour measured after release (PROTOCOL, "Information known at the time"): the TMDB snapshot postdates the
# ratings, and a movie new to the system has none of these. The rest are known before release (content).
POST_RELEASE_FEATURES = ["log_revenue", "popularity", "vote_average", "log_vote_count"]
CATEGORICAL_FEATURES = ["adult", "status", "collection", "original_language", "year_bucket"]
MULTI_VALUED_FEATURES = [
    "genres",
    "keywords",
    "cast",
    "crew",
    "production_companies",
    "production_countries",
    "spoken_languages",
]


@dataclass
class MovieRecord:
    """Everything known about one catalog movie, before vocabulary encoding."""

    movie_id: int | None = None
    tmdb_id: int | None = None
    imdb_id: str | None = None
    title: str | None = None
    year: int | None = None
    genres: list[str] = field(default_factory=list)
    numeric: dict[str, float] = field(default_factory=dict)
    categorical: dict[str, str | None] = field(default_factory=dict)
    bags: dict[str, list[str]] = field(default_factory=dict)
    tagline: str | None = None
    overview: str | None = None
    cast_names: list[str] = field(default_factory=list)
    directors: list[str] = field(default_factory=list)
    has_metadata: bool = False


def fill_missing_features(rec: MovieRecord) -> MovieRecord:
    """Fill absent feature slots with missing values (keeps the schema identical across sources)."""
    for name in NUMERIC_FEATURES:
        rec.numeric.setdefault(name, math.nan)
    if rec.year is not None and math.isnan(rec.numeric["year"]):
        rec.numeric["year"] = float(rec.year)
    for name in CATEGORICAL_FEATURES:
        rec.categorical.setdefault(name, None)
    if rec.categorical["year_bucket"] is None:
        rec.categorical["year_bucket"] = year_bucket(rec.year)
    for name in MULTI_VALUED_FEATURES:
        rec.bags.setdefault(name, [])
    if not rec.bags["genres"] and rec.genres:
        rec.bags["genres"] = list(rec.genres)
    return rec


@dataclass
class SourceData:
    ratings: RatingsColumns
    records: dict[int, MovieRecord]  # by movie_id (MovieLens movieId)
    extra_records: list[MovieRecord]  # metadata-only movies (include_unrated)
    files: list[Path]
