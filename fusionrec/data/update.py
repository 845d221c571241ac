"""Updating a prepared folder with new files without moving what a trained model knows
(`prepare_dataset.py --update PREVIOUS --data-dir NEW --output OUT`).

Every movie and user of PREVIOUS keeps its index and its row; new users and new movies are appended (ascending
source id); every vocabulary keeps its entries and appends the new movies' tokens (same min_count rule, counted over
the new movies); numeric statistics stay PREVIOUS's. The new ratings are merged column-wise with the stored ones:
a rating identical to a stored one (the ETL handing over its whole current file) is already there, a new rating of
a stored (user, movie) pair replaces it when it is later, and the usual time order and tie rule (stored rows before
new rows) give the sequences. Splits are recomputed on the merged ratings: leave-one-out positions and temporal
cut-offs from scratch, cold items stay cold, warm movies stay warm, and the movies this update adds go through the
same seeded cold draw among themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusionrec.data.reading import RatingsColumns
from fusionrec.data.records import MovieRecord
from fusionrec.data.splits import (
    Interactions,
    choose_cold_items,
    latest_duplicate_mask,
    order_interactions,
    unique_ids,
)
from fusionrec.errors import PrepareError
from fusionrec.io import sha256_file

MOVIES_FILE = "movies/train-00000-of-00001.parquet"
SEQUENCES_FILE = "sequences/train-00000-of-00001.parquet"
CHECKSUMMED = ("feature_spec.json", MOVIES_FILE, SEQUENCES_FILE)


def dataset_checksum(folder: Path) -> str:
    """sha256 over the spec and the two parquet files (name and sha256 of each): the identity of a prepared folder."""
    lines = "".join(f"{name}\0{sha256_file(Path(folder) / name)}\n" for name in CHECKSUMMED)
    return hashlib.sha256(lines.encode()).hexdigest()


def spec_sizes(spec: dict[str, Any]) -> dict[str, Any]:
    """The sizes a model's id tables take from a feature spec (FusionRecConfig.feature_signature without the numeric
    names, which an update never changes)."""
    return {
        "num_movies": int(spec["num_movies"]),
        "num_users": int(spec["num_users"]),
        "categorical_vocab_sizes": {n: len(f["vocab"]) for n, f in sorted(spec["categorical_features"].items())},
        "multi_valued_vocab_sizes": {n: len(f["vocab"]) for n, f in sorted(spec["multi_valued_features"].items())},
    }


def ancestor_sizes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The sizes of every folder this one was updated from, oldest first (empty for a fresh prepare)."""
    return list(spec.get("lineage", {}).get("ancestors", []))


@dataclass
class PreviousDataset:
    """A prepared folder read back for an update: its spec, movies table and ratings as flat columns."""

    folder: Path
    spec: dict[str, Any]
    movies: pa.Table
    user_ids: np.ndarray  # int64, user_ids[user_index - 1]
    user_index: np.ndarray  # int32 per stored rating, rows in stored order
    movie_index: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    checksum: str

    @property
    def num_movies(self) -> int:
        return self.movies.num_rows


def read_previous_spec(folder: str | Path) -> dict[str, Any]:
    """The feature spec of the folder to update, after checking the folder holds a whole prepared dataset."""
    folder = Path(folder)
    if not (folder / "feature_spec.json").is_file():
        raise PrepareError(f"--update {folder}: not a prepared dataset (no feature_spec.json); give the folder to update")
    for name in (MOVIES_FILE, SEQUENCES_FILE):
        if not (folder / name).is_file():
            raise PrepareError(f"--update {folder}: {name} is missing; re-prepare that folder")
    try:
        return json.loads((folder / "feature_spec.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrepareError(f"--update {folder}: feature_spec.json is not valid JSON ({error}); re-prepare that folder") from None


def read_previous(folder: str | Path) -> PreviousDataset:
    folder = Path(folder)
    spec = read_previous_spec(folder)
    movies = pq.read_table(folder / MOVIES_FILE)
    sequences = pq.read_table(folder / SEQUENCES_FILE)
    lengths = pa.compute.list_value_length(sequences["movie_index"]).to_numpy(zero_copy_only=False)

    def flat(name: str, dtype) -> np.ndarray:
        return pa.compute.list_flatten(sequences[name]).to_numpy().astype(dtype, copy=False)

    return PreviousDataset(
        folder=folder,
        spec=spec,
        movies=movies,
        user_ids=sequences["user_id"].to_numpy().astype(np.int64),
        user_index=np.repeat(sequences["user_index"].to_numpy().astype(np.int32), lengths),
        movie_index=flat("movie_index", np.int32),
        rating=flat("rating", np.float32),
        timestamp=flat("timestamp", np.int64),
        checksum=dataset_checksum(folder),
    )


def id_column(movies: pa.Table, name: str) -> np.ndarray:
    """A nullable id column as int64, -1 for missing (source ids are never negative)."""
    return pa.compute.fill_null(movies[name], -1).to_numpy().astype(np.int64)


def lookup(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in `known` (unique ids, any order), -1 when absent."""
    sorter = np.argsort(known, kind="stable")
    ordered = known[sorter]
    position = np.searchsorted(ordered, ids).clip(max=max(len(known) - 1, 0))
    found = ordered[position] == ids if len(known) else np.zeros(len(ids), dtype=bool)
    return np.where(found, sorter[position] if len(known) else -1, -1)


def extend_index(known: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each id among `known` followed by the new ids in ascending order, the new ids)."""
    position = lookup(known, ids)
    absent = position < 0
    new_ids = unique_ids(ids[absent])
    position[absent] = len(known) + np.searchsorted(new_ids, ids[absent])
    return position, new_ids


@dataclass
class MergedRatings:
    interactions: Interactions
    new_movie_ids: np.ndarray  # the rated movies this update adds, ascending (rows num_previous_movies...)
    counts: dict[str, int]


def merge_ratings(previous: PreviousDataset, rc: RatingsColumns, skipped: Counter) -> MergedRatings:
    """The stored ratings plus the new ones, time-ordered per user (stored rows first on ties), one per (user, movie)
    pair: the latest. New rows identical to a stored rating are dropped as already there."""
    stored_movie_ids = id_column(previous.movies, "movie_id")
    movie_index, new_movie_ids = extend_index(stored_movie_ids, np.asarray(rc.movie, dtype=np.int64))
    user_position, new_user_ids = extend_index(previous.user_ids, np.asarray(rc.user, dtype=np.int64))
    user_index = user_position + 1
    num_movies = previous.num_movies + len(new_movie_ids)

    stored_pairs = previous.user_index.astype(np.int64) * num_movies + previous.movie_index
    row = lookup(stored_pairs, user_index * num_movies + movie_index)
    stored = np.flatnonzero(row >= 0)
    same = np.zeros(len(row), dtype=bool)
    same[stored] = (previous.timestamp[row[stored]] == rc.timestamp[stored]) & (
        previous.rating[row[stored]] == rc.rating[stored]
    )
    keep = ~same
    columns = [
        np.concatenate((old, np.asarray(new)[keep]))
        for old, new in (
            (previous.user_index, user_index.astype(np.int32)),
            (previous.movie_index, movie_index.astype(np.int32)),
            (previous.rating, rc.rating.astype(np.float32)),
            (previous.timestamp, rc.timestamp.astype(np.int64)),
        )
    ]
    is_new = np.concatenate((np.zeros(len(previous.user_index), bool), np.ones(int(keep.sum()), bool)))
    order = order_interactions(columns[0], columns[3])
    users, movies, ratings, times = (c[order] for c in columns)
    is_new = is_new[order]
    duplicate = latest_duplicate_mask(users, movies)
    superseded_new = int((duplicate & is_new).sum())
    if superseded_new:
        skipped["ratings/duplicate_user_movie"] += superseded_new
    kept = ~duplicate
    interactions = Interactions(
        user_ids=np.concatenate((previous.user_ids, new_user_ids)),
        user_index=users[kept],
        movie_index=movies[kept],
        rating=ratings[kept],
        timestamp=times[kept],
        movie_ids=np.concatenate((stored_movie_ids, new_movie_ids)),
    )
    replaced = int((duplicate & ~is_new).sum())
    counts = {
        "ratings_unchanged": int(same.sum()),
        "ratings_added": int((is_new & kept).sum()) - replaced,
        "ratings_replaced": replaced,
        "users_added": len(new_user_ids),
        "movies_added": len(new_movie_ids),
    }
    return MergedRatings(interactions, new_movie_ids, counts)


def updated_cold_items(previous: PreviousDataset, num_ratings: np.ndarray, cold_settings: dict[str, Any]) -> np.ndarray:
    """Stored movies keep their cold flag; the added ones get the seeded draw of PROTOCOL.md among themselves."""
    stored = previous.movies["cold_item"].to_numpy(zero_copy_only=False).astype(bool)
    added = choose_cold_items(
        num_ratings[len(stored) :], cold_settings["fraction"], cold_settings["min_interactions"], cold_settings["seed"]
    )
    return np.concatenate((stored, added))


def new_extra_records(previous: PreviousDataset, added: list[MovieRecord], extra: list[MovieRecord]) -> list[MovieRecord]:
    """--include-unrated: the metadata-only movies that neither the stored catalog nor this update's rated movies
    hold (by TMDB id)."""
    known = set(id_column(previous.movies, "tmdb_id").tolist()) | {r.tmdb_id for r in added if r.tmdb_id is not None}
    return [r for r in extra if r.tmdb_id is None or r.tmdb_id not in known]


def stored_movies(previous: PreviousDataset, num_ratings: np.ndarray, cold: np.ndarray) -> pa.Table:
    """The stored rows unchanged but for the two columns that follow the ratings: num_ratings and cold_item."""
    table = previous.movies
    n = previous.num_movies
    for name, values in (("num_ratings", pa.array(num_ratings[:n].astype(np.int32))), ("cold_item", pa.array(cold[:n]))):
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


def added_tokens(previous_spec: dict[str, Any], features: dict[str, Any]) -> dict[str, int]:
    """New vocabulary entries per feature."""
    return {
        name: len(feature["vocab"]) - len(previous_spec[part][name]["vocab"])
        for part in ("categorical_features", "multi_valued_features")
        for name, feature in features[part].items()
    }


def lineage(previous: PreviousDataset, counts: dict[str, int], vocabulary: dict[str, int]) -> dict[str, Any]:
    """What the card and the spec record of an update: the folder it came from, its checksum, what was added, and
    the sizes of every earlier version (a model trained on any of them can be grown to this folder)."""
    return {
        "previous": {
            "folder": previous.folder.name,
            "sha256": previous.checksum,
            "num_movies": previous.num_movies,
            "num_users": int(previous.spec["num_users"]),
            "ratings": int(previous.spec["counts"]["ratings_kept"]),
        },
        "added": {**counts, "vocabulary": vocabulary},
        "ancestors": [*ancestor_sizes(previous.spec), {"sha256": previous.checksum, **spec_sizes(previous.spec)}],
    }
