"""Raw folders for the update tests, cut from one synthetic Kaggle-schema dataset: what an ETL had yesterday (old),
its whole current files today (full), and only what changed since (delta).

Since yesterday: new users, new movies (one with a genre nobody had, one with a new keyword), new ratings of old
users, and one stored rating changed (a later, different rating of the same pair)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusionrec.data.sources.synthetic import generate_synthetic

NEW_GENRE = "Documentary"
NEW_COLLECTION = "New Saga Collection"  # two new movies share it: a categorical value the update adds
NEW_KEYWORD = "found on a hard drive"
TABLES = ("movies_metadata.csv", "keywords.csv", "credits.csv")


@dataclass
class UpdateSources:
    old: Path
    full: Path
    delta: Path
    new_user_ids: list[int]  # the 5 held back, and those who rated nothing before the cut-off
    new_movie_ids: list[int]
    changed_pair: tuple[int, int]  # (userId, movieId) whose rating changed


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write(frames: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(folder / name, index=False)
    return folder


def _append(cell: str, item: dict) -> str:
    return repr([*(ast.literal_eval(cell) if cell else []), item])


def write_update_sources(root: Path, *, users: int = 60, movies: int = 120, seed: int = 0) -> UpdateSources:
    raw = root / "raw"
    generate_synthetic(raw, seed, users, movies, 25.0)
    ratings = pd.read_csv(raw / "ratings_small.csv")
    links = _read(raw / "links_small.csv")
    tables = {name: _read(raw / name) for name in TABLES}
    new_movie_ids = [int(m) for m in links["movieId"].iloc[-17:-5]]  # the generator's last 5 have no metadata
    held_back = sorted(ratings["userId"].unique())[-5:]
    cutoff = ratings["timestamp"].quantile(0.8)
    old = (ratings["timestamp"] <= cutoff) & ~ratings["movieId"].isin(new_movie_ids) & ~ratings["userId"].isin(held_back)
    new_user_ids = sorted(int(u) for u in set(ratings["userId"]) - set(ratings.loc[old, "userId"]))
    stored = ratings[old].iloc[3]
    change = pd.DataFrame([{
        "userId": stored["userId"], "movieId": stored["movieId"],
        "rating": 5.0 if stored["rating"] != 5.0 else 1.0, "timestamp": ratings["timestamp"].max() + 100,
    }])  # fmt: skip
    today = pd.concat([ratings, change], ignore_index=True)

    new_tmdb = links.loc[links["movieId"].astype(int).isin(new_movie_ids), "tmdbId"].tolist()
    current = {name: frame.copy() for name, frame in tables.items()}
    meta, keywords = current["movies_metadata.csv"], current["keywords.csv"]
    first = meta.index[meta["id"] == new_tmdb[0]][0]
    meta.loc[first, "genres"] = _append(meta.loc[first, "genres"], {"id": 99, "name": NEW_GENRE})
    for tmdb_id in new_tmdb[2:4]:
        meta.loc[meta["id"] == tmdb_id, "belongs_to_collection"] = str({"id": 777, "name": NEW_COLLECTION})
    second = keywords.index[keywords["id"].isin(new_tmdb[1:])][0]
    keywords.loc[second, "keywords"] = _append(keywords.loc[second, "keywords"], {"id": 9999, "name": NEW_KEYWORD})

    old_dir = _write({"ratings_small.csv": ratings[old], "links_small.csv": links, **tables}, root / "old")
    full_dir = _write({"ratings_small.csv": today, "links_small.csv": links, **current}, root / "full")
    delta_dir = _write(
        {
            "ratings_small.csv": pd.concat([ratings[~old], change], ignore_index=True),
            "links_small.csv": links[links["tmdbId"].isin(new_tmdb)],
            **{name: frame[frame["id"].isin(new_tmdb)] for name, frame in current.items()},
        },
        root / "delta",
    )
    return UpdateSources(
        old_dir, full_dir, delta_dir, new_user_ids, new_movie_ids, (int(stored["userId"]), int(stored["movieId"]))
    )
