"""Source `tmdb`: the Kaggle "The Movies Dataset" files (movies_metadata.csv, keywords.csv, credits.csv,
links*.csv, ratings*.csv) -> ratings columns and one MovieRecord per rated movie, joined through links (movieId ->
tmdbId). Also the parser of one movies_metadata.csv row, which the synthetic source reuses through its CSVs.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from fusionrec.data.parsing import (
    WHITESPACE,
    as_text,
    cast_names,
    crew_tokens,
    format_imdb_id,
    log1p_nonnegative,
    log1p_positive,
    names_of,
    parse_float,
    parse_int_id,
    parse_stringified_list,
    parse_year,
    year_bucket,
)
from fusionrec.data.reading import (
    DEFAULT_RATING_RANGE,
    first_row_per_id,
    logger,
    read_header,
    read_ratings,
    read_text_table,
    require_columns,
    require_file,
    stage,
    with_progress,
)
from fusionrec.data.records import MovieRecord, SourceData, fill_missing_features
from fusionrec.data.splits import unique_ids
from fusionrec.errors import PrepareError


def _parse_list_cell(value: Any, skipped: Counter, reason: str) -> list[dict]:
    items = parse_stringified_list(value)
    if items is None:
        skipped[reason] += 1
        return []
    return items


def parse_metadata_row(row: dict[str, str | None], skipped: Counter) -> MovieRecord:
    """One movies_metadata.csv row -> MovieRecord (ids are set by the caller)."""
    rec = MovieRecord(has_metadata=True)
    rec.title = as_text(row.get("title")) or as_text(row.get("original_title"))
    rec.imdb_id = format_imdb_id(row.get("imdb_id"))
    rec.year = parse_year(row.get("release_date"))
    genres = names_of(_parse_list_cell(row.get("genres"), skipped, "movies_metadata/bad_genres"))
    rec.genres = genres
    collection_cell = row.get("belongs_to_collection")
    collection = parse_stringified_list(collection_cell)
    if collection is None:
        skipped["movies_metadata/bad_belongs_to_collection"] += 1
        collection = []
    collection_names = names_of(collection)
    budget, revenue = parse_float(row.get("budget")), parse_float(row.get("revenue"))
    runtime = parse_float(row.get("runtime"))
    vote_count = parse_float(row.get("vote_count"))
    vote_average = parse_float(row.get("vote_average"))
    rec.numeric = {
        "log_budget": log1p_positive(budget),
        "log_revenue": log1p_positive(revenue),
        "runtime": runtime if runtime > 0 else math.nan,
        "popularity": log1p_nonnegative(parse_float(row.get("popularity"))),
        "vote_average": vote_average if vote_count > 0 else math.nan,
        "log_vote_count": log1p_nonnegative(vote_count),
        "year": math.nan if rec.year is None else float(rec.year),
    }
    adult = as_text(row.get("adult"))
    rec.categorical = {
        "adult": adult if adult in ("True", "False") else None,
        "status": as_text(row.get("status")),
        "collection": collection_names[0] if collection_names else None,
        "original_language": as_text(row.get("original_language")),
        "year_bucket": year_bucket(rec.year),
    }
    rec.bags = {
        "genres": genres,
        "production_companies": names_of(
            _parse_list_cell(
                row.get("production_companies"), skipped, "movies_metadata/bad_production_companies"
            )
        ),
        "production_countries": names_of(
            _parse_list_cell(
                row.get("production_countries"), skipped, "movies_metadata/bad_production_countries"
            ),
            key="iso_3166_1",
        ),
        "spoken_languages": names_of(
            _parse_list_cell(row.get("spoken_languages"), skipped, "movies_metadata/bad_spoken_languages"),
            key="iso_639_1",
        ),
    }
    rec.tagline = as_text(row.get("tagline"))
    overview = as_text(row.get("overview"))
    if overview is not None and overview.lower() in (
        "no overview found.",
        "no overview",
        "no movie overview available.",
    ):
        overview = None
    rec.overview = None if overview is None else WHITESPACE.sub(" ", overview)
    return rec


def resolve_tmdb_files(data_dir: Path, ratings: str | None, links: str | None) -> tuple[Path, Path]:
    if not data_dir.is_dir():
        raise PrepareError(
            f"data directory {data_dir} does not exist; pass --data-dir with the Kaggle CSV files"
        )
    if ratings is None:
        small = (data_dir / "ratings_small.csv").is_file()
        if small and ((data_dir / "links_small.csv").is_file() or not (data_dir / "ratings.csv").is_file()):
            ratings = "ratings_small.csv"  # without its links file: stops below, naming links_small.csv
        elif (data_dir / "ratings.csv").is_file():
            ratings = "ratings.csv"
        else:
            raise PrepareError(
                f"missing required file {data_dir / 'ratings_small.csv'} (or ratings.csv): "
                "download the Kaggle 'The Movies Dataset' files into --data-dir"
            )
    ratings_path = Path(ratings) if Path(ratings).is_absolute() else data_dir / ratings
    if not ratings_path.is_file():
        raise PrepareError(f"missing required file {ratings_path}: check --ratings and --data-dir")
    if links is None:
        small = "small" in ratings_path.name
        candidates = ["links_small.csv", "links.csv"] if small else ["links.csv", "links_small.csv"]
        found = [data_dir / c for c in candidates if (data_dir / c).is_file()]
        if not found:
            raise PrepareError(
                f"missing required file {data_dir / candidates[0]}: the ratings join metadata through links "
                "(movieId -> tmdbId); copy it from the Kaggle download"
            )
        links_path = found[0]
    else:
        links_path = Path(links) if Path(links).is_absolute() else data_dir / links
        if not links_path.is_file():
            raise PrepareError(f"missing required file {links_path}: check --links")
    return ratings_path, links_path


def load_tmdb(
    data_dir: Path,
    skipped: Counter,
    *,
    ratings: str | None = None,
    links: str | None = None,
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
    include_unrated: bool = False,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> SourceData:
    timings = {} if timings is None else timings
    data_dir = Path(data_dir)
    ratings_path, links_path = resolve_tmdb_files(data_dir, ratings, links)
    metadata_path = require_file(
        data_dir, "movies_metadata.csv", "download movies_metadata.csv from the Kaggle 'The Movies Dataset'"
    )
    keywords_path = data_dir / "keywords.csv"
    credits_path = data_dir / "credits.csv"
    # Check every header first, so a bad file fails before the slow steps.
    require_columns(metadata_path, read_header(metadata_path), ["id", "title"])
    require_columns(links_path, read_header(links_path), ["movieId", "tmdbId"])
    if keywords_path.is_file():
        require_columns(keywords_path, read_header(keywords_path), ["id", "keywords"])
    if credits_path.is_file():
        require_columns(credits_path, read_header(credits_path), ["id", "cast", "crew"])

    with stage("read ratings", timings):
        rc = read_ratings(ratings_path, skipped, rating_range=rating_range)
    with stage("read links + metadata", timings):
        link_table = read_text_table(links_path, ["movieId", "tmdbId"], skipped, "links")
        link_rows = first_row_per_id(link_table["movieId"], skipped, "links")
        tmdb_of: dict[int, int] = {}
        imdb_of: dict[int, str] = {}
        for movie_id, row in link_rows.items():
            tmdb = parse_int_id(link_table["tmdbId"][row])
            if tmdb is None:
                skipped["links/missing_tmdb_id" if link_table["tmdbId"][row] is None else "links/bad_tmdb_id"] += 1
            else:
                tmdb_of[movie_id] = tmdb
            imdb = format_imdb_id(link_table.get("imdbId", [None] * (row + 1))[row])
            if imdb:
                imdb_of[movie_id] = imdb
        rated = set(unique_ids(rc.movie).tolist())
        wanted_tmdb = None if include_unrated else {tmdb_of[m] for m in rated if m in tmdb_of}
        meta = read_text_table(metadata_path, ["id", "title"], skipped, "movies_metadata")
        meta_rows = first_row_per_id(meta["id"], skipped, "movies_metadata", wanted_tmdb)
    columns = list(meta)
    meta_records: dict[int, MovieRecord] = {}
    with stage("parse metadata", timings):
        for tmdb, row in with_progress(meta_rows.items(), len(meta_rows), "metadata", progress):
            rec = parse_metadata_row({c: meta[c][row] for c in columns}, skipped)
            rec.tmdb_id = tmdb
            meta_records[tmdb] = rec
        del meta
        keywords: dict[int, list[str]] = {}
        if keywords_path.is_file():
            table = read_text_table(keywords_path, ["id", "keywords"], skipped, "keywords")
            for tmdb, row in first_row_per_id(table["id"], skipped, "keywords", wanted_tmdb).items():
                keywords[tmdb] = names_of(
                    _parse_list_cell(table["keywords"][row], skipped, "keywords/bad_list")
                )
        else:
            logger.warning("keywords.csv not found in %s: keyword features will be empty", data_dir)
        credits: dict[int, tuple[list[str], list[str]]] = {}
        if credits_path.is_file():
            table = read_text_table(credits_path, ["id", "cast", "crew"], skipped, "credits")
            rows = first_row_per_id(table["id"], skipped, "credits", wanted_tmdb)
            for tmdb, row in with_progress(rows.items(), len(rows), "credits", progress):
                cast = cast_names(_parse_list_cell(table["cast"][row], skipped, "credits/bad_cast"))
                crew = crew_tokens(_parse_list_cell(table["crew"][row], skipped, "credits/bad_crew"))
                credits[tmdb] = (cast, crew)
            del table
        else:
            logger.warning("credits.csv not found in %s: cast/crew features will be empty", data_dir)

    def assemble(movie_id: int | None, tmdb: int | None) -> MovieRecord:
        rec = meta_records.get(tmdb) if tmdb is not None else None
        rec = MovieRecord() if rec is None else _copy_record(rec)
        rec.movie_id, rec.tmdb_id = movie_id, tmdb
        if rec.imdb_id is None and movie_id is not None:
            rec.imdb_id = imdb_of.get(movie_id)
        if tmdb is not None and tmdb in keywords:
            rec.bags["keywords"] = keywords[tmdb]
        if tmdb is not None and tmdb in credits:
            cast, crew = credits[tmdb]
            rec.bags["cast"], rec.bags["crew"] = cast, crew
            rec.cast_names = cast
            rec.directors = [t.split(":", 1)[1] for t in crew if t.startswith("Director:")]
        return fill_missing_features(rec)

    records = {m: assemble(m, tmdb_of.get(m)) for m in sorted(rated)}
    extra: list[MovieRecord] = []
    if include_unrated:
        used = {r.tmdb_id for r in records.values() if r.tmdb_id is not None}
        tmdb_to_movie: dict[int, int] = {}
        for movie_id in sorted(tmdb_of):
            tmdb_to_movie.setdefault(tmdb_of[movie_id], movie_id)
        for tmdb in sorted(meta_records):
            if tmdb not in used:
                extra.append(assemble(tmdb_to_movie.get(tmdb), tmdb))
    files = [ratings_path, links_path, metadata_path]
    files += [p for p in (keywords_path, credits_path) if p.is_file()]
    return SourceData(rc, records, extra, files)


def _copy_record(rec: MovieRecord) -> MovieRecord:
    out = MovieRecord(**{k: getattr(rec, k) for k in rec.__dataclass_fields__})
    out.numeric, out.categorical, out.bags = dict(rec.numeric), dict(rec.categorical), dict(rec.bags)
    return out
