"""Movie records and interactions -> the two output tables (docs/DATASET_FORMAT.md): vocabularies and encoded
features, numeric statistics, the rendered text column, one row per user with split markers, and deterministic
parquet (the same inputs give byte-identical files).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusionrec.data.parsing import WHITESPACE
from fusionrec.data.records import (
    CATEGORICAL_FEATURES,
    MULTI_VALUED_FEATURES,
    NUMERIC_FEATURES,
    NUMERIC_TRANSFORMS,
    POST_RELEASE_FEATURES,
    MovieRecord,
)
from fusionrec.data.splits import Interactions, first_position_after, leave_one_out_positions
from fusionrec.errors import PrepareError

PAD_TOKEN, OOV_TOKEN = "<pad>", "<oov>"
PAD_INDEX, OOV_INDEX = 0, 1
DEFAULT_MIN_COUNT = {
    "adult": 1,
    "status": 1,
    "collection": 2,
    "original_language": 1,
    "year_bucket": 1,
    "genres": 1,
    "keywords": 2,
    "cast": 2,
    "crew": 2,
    "production_companies": 2,
    "production_countries": 1,
    "spoken_languages": 1,
}
DEFAULT_MAX_LENGTH = {
    "genres": 8,
    "keywords": 32,
    "cast": 16,
    "crew": 16,
    "production_companies": 8,
    "production_countries": 8,
    "spoken_languages": 8,
}
TEXT_TEMPLATE = "{title} ({year}). Genres: {genres}. {tagline} {overview} Keywords: {keywords}. Cast: {cast}. Director: {director}."
TEXT_MAX_KEYWORDS = 10
TEXT_MAX_CAST = 5
ROW_GROUP_SIZE = 8192


def build_vocab(counts: Counter | dict, min_count: int = 1) -> list[str]:
    """["<pad>", "<oov>", tokens with count >= min_count by descending count then token]."""
    kept = [
        (token, c) for token, c in counts.items() if c >= min_count and token not in (PAD_TOKEN, OOV_TOKEN)
    ]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return [PAD_TOKEN, OOV_TOKEN] + [token for token, _ in kept]


def encode_category(value: str | None, index: dict[str, int]) -> int:
    """Vocab index: missing -> 0 (<pad>), unseen/rare -> 1 (<oov>)."""
    if value is None or value == "":
        return PAD_INDEX
    return index.get(value, OOV_INDEX)


def encode_bag(tokens: Sequence[str], index: dict[str, int], max_length: int) -> list[int]:
    """Vocab indices of the first max_length tokens, order kept, rare ones as <oov>, no padding."""
    return [index.get(token, OOV_INDEX) for token in tokens[:max_length]]


def render_text(
    title: str,
    year: int | None,
    genres: Sequence[str] = (),
    tagline: str | None = None,
    overview: str | None = None,
    keywords: Sequence[str] = (),
    cast: Sequence[str] = (),
    director: Sequence[str] = (),
    template: str = TEXT_TEMPLATE,
) -> str:
    """Fill the text template; empty parts ("()", "Genres: .", ...) are dropped and whitespace collapsed."""
    text = template.format(
        title=title,
        year="" if year is None else year,
        genres=", ".join(genres),
        tagline=tagline or "",
        overview=overview or "",
        keywords=", ".join(keywords),
        cast=", ".join(cast),
        director=", ".join(director),
    )
    text = text.replace(" ()", "")
    text = re.sub(r"\b(Genres|Keywords|Cast|Director): \.", "", text)
    text = WHITESPACE.sub(" ", text).strip()
    return text


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    if offsets[-1] >= 2**31:
        raise PrepareError(
            "more than 2^31 interactions: split the ratings file (list<int32> offsets overflow)"
        )
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def build_sequences_table(
    inter: Interactions, num_users: int, loo_min: int, cutoffs: tuple[int, int]
) -> pa.Table:
    lengths = np.bincount(inter.user_index, minlength=num_users)[1:]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    loo_valid, loo_test = leave_one_out_positions(lengths, loo_min)
    test_cutoff, valid_cutoff = cutoffs
    valid_start = first_position_after(inter.user_index, inter.timestamp, num_users, valid_cutoff)[1:]
    test_start = first_position_after(inter.user_index, inter.timestamp, num_users, test_cutoff)[1:]
    schema = pa.schema(
        [
            ("user_index", pa.int32()),
            ("user_id", pa.int64()),
            ("movie_index", pa.list_(pa.int32())),
            ("rating", pa.list_(pa.float32())),
            ("timestamp", pa.list_(pa.int64())),
            ("loo_valid_position", pa.int32()),
            ("loo_test_position", pa.int32()),
            ("temporal_valid_start", pa.int32()),
            ("temporal_test_start", pa.int32()),
        ]
    )
    arrays = [
        pa.array(np.arange(1, num_users, dtype=np.int32)),
        pa.array(inter.user_ids.astype(np.int64)),
        _list_array(offsets, inter.movie_index, pa.int32()),
        _list_array(offsets, inter.rating, pa.float32()),
        _list_array(offsets, inter.timestamp, pa.int64()),
        pa.array(loo_valid),
        pa.array(loo_test),
        pa.array(valid_start),
        pa.array(test_start),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def token_counts(records: Sequence[MovieRecord]) -> dict[str, Counter]:
    """Per categorical and multi-valued feature: in how many movies each token occurs."""
    counts = {name: Counter(r.categorical[name] for r in records if r.categorical.get(name)) for name in CATEGORICAL_FEATURES}
    counts.update({name: Counter(t for r in records for t in set(r.bags[name])) for name in MULTI_VALUED_FEATURES})
    return counts


def extend_vocab(vocab: Sequence[str], counts: Counter | dict, min_count: int) -> list[str]:
    """`vocab` unchanged, then the tokens it lacks with count >= min_count (descending count, then token): indices
    a trained model knows keep their meaning."""
    known = set(vocab)
    return list(vocab) + [t for t in build_vocab(counts, min_count)[2:] if t not in known]


def feature_vocabularies(
    records: Sequence[MovieRecord],
    min_counts: dict[str, int],
    max_lengths: dict[str, int],
    *,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `categorical_features` and `multi_valued_features` parts of the feature spec, built from `records`; with
    `previous` (those parts of an earlier spec) its vocabularies are kept and only new tokens are appended."""
    counts = token_counts(records)
    parts: dict[str, Any] = {"categorical_features": {}, "multi_valued_features": {}}
    for part, names in (("categorical_features", CATEGORICAL_FEATURES), ("multi_valued_features", MULTI_VALUED_FEATURES)):
        for name in names:
            old = previous[part][name]["vocab"] if previous else [PAD_TOKEN, OOV_TOKEN]
            entry = {"vocab": extend_vocab(old, counts[name], min_counts[name]), "min_count": min_counts[name]}
            if part == "multi_valued_features":
                entry["max_length"] = max_lengths[name]
            parts[part][name] = entry
    return parts


def numeric_matrix(records: Sequence[MovieRecord]) -> np.ndarray:
    """(movies, numeric features) float64, NaN = missing."""
    values = [[r.numeric[n] for n in NUMERIC_FEATURES] for r in records]
    return np.array(values, dtype=np.float64).reshape(len(records), len(NUMERIC_FEATURES))


def numeric_statistics(numeric: np.ndarray) -> dict[str, Any]:
    """The `numeric_features` part of the feature spec: names, mean and std of the present values, missing counts."""
    means, stds, missing = [], [], []
    for j in range(len(NUMERIC_FEATURES)):
        col = numeric[:, j]
        present = col[np.isfinite(col)]
        mean = float(present.mean()) if present.size else 0.0
        std = float(present.std()) if present.size else 1.0
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
        missing.append(int(col.size - present.size))
    return {
        "names": list(NUMERIC_FEATURES),
        "mean": means,
        "std": stds,
        "transforms": dict(NUMERIC_TRANSFORMS),
        "missing": dict(zip(NUMERIC_FEATURES, missing, strict=True)),
        "post_release": [name for name in NUMERIC_FEATURES if name in POST_RELEASE_FEATURES],
    }


def missing_values(records: Sequence[MovieRecord]) -> dict[str, int]:
    return {
        "overview": sum(1 for r in records if r.has_metadata and not r.overview),
        "tagline": sum(1 for r in records if r.has_metadata and not r.tagline),
        "year": sum(1 for r in records if r.year is None),
        "title": sum(1 for r in records if not r.title),
    }


def encode_movies(
    records: Sequence[MovieRecord],
    vocabularies: dict[str, Any],
    num_ratings: np.ndarray,
    cold: np.ndarray,
    *,
    first_index: int = 0,
) -> pa.Table:
    """The movies table rows of `records` (movie_index from `first_index`), encoded with the spec's vocabularies."""
    n = len(records)
    numeric = numeric_matrix(records)
    titles = [r.title or (f"movie {r.movie_id}" if r.movie_id is not None else "") for r in records]
    texts = [
        render_text(
            title, r.year, r.genres, r.tagline, r.overview, r.bags["keywords"][:TEXT_MAX_KEYWORDS],
            r.cast_names[:TEXT_MAX_CAST], r.directors,
        )
        for title, r in zip(titles, records, strict=True)
    ]  # fmt: skip
    columns: dict[str, pa.Array] = {
        "movie_index": pa.array(np.arange(first_index, first_index + n, dtype=np.int32)),
        "movie_id": pa.array([r.movie_id for r in records], type=pa.int64()),
        "tmdb_id": pa.array([r.tmdb_id for r in records], type=pa.int64()),
        "imdb_id": pa.array([r.imdb_id for r in records], type=pa.string()),
        "title": pa.array(titles, type=pa.string()),
        "year": pa.array([r.year for r in records], type=pa.int32()),
        "genres": pa.array([list(r.genres) for r in records], type=pa.list_(pa.string())),
        "numeric": pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32) * len(NUMERIC_FEATURES)),
            pa.array(numeric.astype(np.float32).ravel(), type=pa.float32(), from_pandas=False),
        ),
    }
    for name, feature in vocabularies["categorical_features"].items():
        index = {t: i for i, t in enumerate(feature["vocab"])}
        columns[f"cat_{name}"] = pa.array(
            np.array([encode_category(r.categorical[name], index) for r in records], dtype=np.int32)
        )
    for name, feature in vocabularies["multi_valued_features"].items():
        index, limit = {t: i for i, t in enumerate(feature["vocab"])}, feature["max_length"]
        columns[f"bag_{name}"] = pa.array(
            [encode_bag(r.bags[name], index, limit) for r in records], type=pa.list_(pa.int32())
        )
    columns["text"] = pa.array(texts, type=pa.string())
    columns["has_metadata"] = pa.array([r.has_metadata for r in records], type=pa.bool_())
    columns["num_ratings"] = pa.array(np.asarray(num_ratings, dtype=np.int32))
    columns["cold_item"] = pa.array(np.asarray(cold, dtype=bool))
    return pa.table(columns)


def build_movies_table(
    records: Sequence[MovieRecord],
    num_ratings: np.ndarray,
    cold: np.ndarray,
    min_counts: dict[str, int],
    max_lengths: dict[str, int],
) -> tuple[pa.Table, dict[str, Any]]:
    """Encode catalog records; returns the table and the feature_spec pieces (vocabularies, numeric stats)."""
    spec = feature_vocabularies(records, min_counts, max_lengths)
    spec["numeric_features"] = numeric_statistics(numeric_matrix(records))
    spec["missing_values"] = missing_values(records)
    return encode_movies(records, spec, num_ratings, cold), spec


def write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic parquet: fixed row groups, zstd, no pandas metadata, no timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table.replace_schema_metadata(None),
        path,
        row_group_size=ROW_GROUP_SIZE,
        compression="zstd",
        compression_level=3,
        use_dictionary=True,
        write_statistics=True,
    )
