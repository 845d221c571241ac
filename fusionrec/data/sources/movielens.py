"""Source `movielens`: MovieLens "latest" (ratings.csv, movies.csv, links.csv, tags.csv) or 100K (u.data, u.item,
u.genre, u.user) -> ratings columns and one MovieRecord per rated movie (title, year, genres; tags as keywords).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from fusionrec.data.parsing import WHITESPACE, format_imdb_id, parse_int_id, parse_movielens_title, parse_year
from fusionrec.data.reading import (
    DEFAULT_RATING_RANGE,
    first_row_per_id,
    read_header,
    read_ratings,
    read_text_table,
    require_columns,
    require_file,
    stage,
)
from fusionrec.data.records import MovieRecord, SourceData, fill_missing_features
from fusionrec.data.splits import unique_ids
from fusionrec.errors import PrepareError

MOVIELENS_100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def load_movielens(
    data_dir: Path,
    skipped: Counter,
    *,
    ratings: str | None = None,
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
    include_unrated: bool = False,
    timings: dict[str, float] | None = None,
) -> SourceData:
    timings = {} if timings is None else timings
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PrepareError(
            f"data directory {data_dir} does not exist; pass --data-dir with the MovieLens files"
        )
    records: dict[int, MovieRecord] = {}
    files: list[Path] = []
    if (data_dir / "u.data").is_file() or (ratings or "").endswith("u.data"):
        ratings_path = data_dir / (ratings or "u.data")
        item_path = require_file(data_dir, "u.item", "the MovieLens 100K layout needs u.item next to u.data")
        with stage("read ratings", timings):
            rc = read_ratings(
                ratings_path, skipped, delimiter="\t", has_header=False, rating_range=rating_range,
                columns=("userId", "movieId", "rating", "timestamp"),
            )  # fmt: skip
        genre_names = list(MOVIELENS_100K_GENRES)
        genre_path = data_dir / "u.genre"
        if genre_path.is_file():
            parsed = [
                line.split("|")[0]
                for line in genre_path.read_text(encoding="latin-1").splitlines()
                if line.strip()
            ]
            if parsed:
                genre_names = parsed
        flags = [f"g{i}" for i in range(len(genre_names))]
        item_columns = ["movieId", "title", "release_date", "video_release_date", "imdb_url", *flags]
        table = read_text_table(
            item_path, [], skipped, "u.item", delimiter="|", has_header=False, column_names=item_columns,
            encoding="latin-1",
        )  # fmt: skip
        for movie_id, row in first_row_per_id(table["movieId"], skipped, "u.item").items():
            title, year = parse_movielens_title(table["title"][row])
            year = parse_year(table["release_date"][row]) or year
            genres = [
                g for g, f in zip(genre_names, flags, strict=True) if table[f][row] == "1" and g != "unknown"
            ]
            records[movie_id] = MovieRecord(
                movie_id=movie_id, title=title or None, year=year, genres=genres, has_metadata=True
            )
        files += [ratings_path, item_path] + [p for p in (genre_path, data_dir / "u.user") if p.is_file()]
    else:
        ratings_path = data_dir / (ratings or "ratings.csv")
        if not ratings_path.is_file():
            raise PrepareError(
                f"missing required file {ratings_path}: --source movielens needs ratings.csv + movies.csv "
                "(MovieLens latest) or u.data + u.item (MovieLens 100K) in --data-dir"
            )
        movies_path = require_file(data_dir, "movies.csv", "the MovieLens latest layout needs movies.csv")
        require_columns(movies_path, read_header(movies_path), ["movieId", "title", "genres"])
        with stage("read ratings", timings):
            rc = read_ratings(ratings_path, skipped, rating_range=rating_range)
        table = read_text_table(movies_path, ["movieId", "title", "genres"], skipped, "movies")
        for movie_id, row in first_row_per_id(table["movieId"], skipped, "movies").items():
            title, year = parse_movielens_title(table["title"][row])
            genre_text = table["genres"][row] or ""
            genres = [
                g.strip() for g in genre_text.split("|") if g.strip() and g.strip() != "(no genres listed)"
            ]
            records[movie_id] = MovieRecord(
                movie_id=movie_id, title=title or None, year=year, genres=genres, has_metadata=True
            )
        files += [ratings_path, movies_path]
        links_path = data_dir / "links.csv"
        if links_path.is_file():
            links = read_text_table(links_path, ["movieId"], skipped, "links")
            for movie_id, row in first_row_per_id(links["movieId"], skipped, "links").items():
                rec = records.get(movie_id)
                if rec is not None:
                    rec.tmdb_id = parse_int_id((links.get("tmdbId") or [None] * (row + 1))[row])
                    rec.imdb_id = format_imdb_id((links.get("imdbId") or [None] * (row + 1))[row])
            files.append(links_path)
        tags_path = data_dir / "tags.csv"
        if tags_path.is_file():
            tags = read_text_table(tags_path, ["movieId", "tag"], skipped, "tags")
            frame = pd.DataFrame({"movieId": tags["movieId"], "tag": tags["tag"]})
            frame["movieId"] = pd.to_numeric(frame["movieId"], errors="coerce")
            frame["tag"] = (
                frame["tag"]
                .astype(object)
                .map(lambda t: None if t is None else WHITESPACE.sub(" ", str(t)).strip().lower() or None)
            )
            bad = frame["movieId"].isna() | frame["tag"].isna()
            if bad.any():
                skipped["tags/bad_row"] += int(bad.sum())
            frame = frame[~bad]
            sizes = frame.groupby(["movieId", "tag"], sort=False).size().reset_index(name="n")
            sizes = sizes.sort_values(["movieId", "n", "tag"], ascending=[True, False, True], kind="stable")
            for movie_id, group in sizes.groupby("movieId", sort=True):
                rec = records.get(int(movie_id))
                if rec is not None:
                    rec.bags["keywords"] = group["tag"].tolist()
            files.append(tags_path)
    rated = unique_ids(rc.movie).tolist()
    out: dict[int, MovieRecord] = {}
    for movie_id in rated:
        rec = records.get(movie_id) or MovieRecord(movie_id=movie_id)
        out[movie_id] = fill_missing_features(rec)
    extra = [fill_missing_features(records[m]) for m in sorted(records) if m not in out] if include_unrated else []
    return SourceData(rc, out, extra, files)
