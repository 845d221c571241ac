"""Helpers shared by the prepare tests: reading the output tables, and a small dirty Kaggle-schema folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MOVIES_FILE = Path("movies/train-00000-of-00001.parquet")
SEQUENCES_FILE = Path("sequences/train-00000-of-00001.parquet")


def read_movies(folder: Path) -> pa.Table:
    return pq.read_table(folder / MOVIES_FILE)


def read_sequences(folder: Path) -> pa.Table:
    return pq.read_table(folder / SEQUENCES_FILE)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


META_HEADER = (
    "adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,overview,"
    "popularity,poster_path,production_companies,production_countries,release_date,revenue,runtime,"
    "spoken_languages,status,tagline,title,video,vote_average,vote_count"
)


def meta_row(tmdb: str, title: str, genres: str = "[{'id': 18, 'name': 'Drama'}]", overview: str = "A story.",
             budget: str = "1000", companies: str = "[]") -> str:  # fmt: skip
    return (
        f'False,,{budget},"{genres}",,{tmdb},tt00000{tmdb[:2]},en,{title},"{overview}",1.5,,"{companies}",'
        f"\"[{{'iso_3166_1': 'US', 'name': 'United States of America'}}]\",1999-05-01,0,90.0,"
        f"\"[{{'iso_639_1': 'en', 'name': 'English'}}]\",Released,,{title},False,6.5,10"
    )


def write_dirty_kaggle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings_small.csv").write_text(
        "userId,movieId,rating,timestamp\r\n"
        "1,10,4.0,100\r\n"
        "1,20,3.5,200\r\n"
        "1,30,abc,300\r\n"  # bad rating
        "1,30,7.5,300\r\n"  # out of range
        "x1,10,4.0,100\r\n"  # bad user id
        "2,1997-08-20,4.0,100\r\n"  # date-like movie id
        "2,10,4.0,notatime\r\n"  # bad timestamp
        "2,10,4.0\r\n"  # too few columns
        "2,10,4.0,100,9\r\n"  # too many columns
        "2,10,2.0,150\r\n"
        "2,20,5.0,160\r\n"
        "2,10,1.0,170\r\n"  # duplicate (2,10): this later one is kept
        "2,40,3.0,180\r\n"  # movie 40 has no link row
        "3,30,,100\r\n"  # empty rating
        "3,20,2.5,100\r\n"
        "3,30,4.0,110\r\n"  # movie 30's link has no tmdbId
    )
    (folder / "links_small.csv").write_text(
        "movieId,imdbId,tmdbId\r\n10,0000010,110\r\n20,0000020,120\r\n30,0000030,\r\nabc,1,1\r\n10,0000011,999\r\n"
    )
    rows = [
        META_HEADER,
        meta_row("110", "Ten", overview=""),  # missing overview
        meta_row(
            "120", "Twenty", genres="[{'id': 18, 'name': 'Drama'", budget="0"
        ),  # broken list, zero budget
        meta_row("1997-08-20", "Dated"),  # date-like id
        meta_row("120", "Twenty again"),  # duplicate id, first kept
        "False,oops,too,few",  # malformed row
        meta_row("130", "Thirty", companies="[{'name': 'Studio', 'id': 1}] extra"),  # broken list
    ]
    (folder / "movies_metadata.csv").write_text("\n".join(rows) + "\n")
    (folder / "keywords.csv").write_text(
        "id,keywords\n110,\"[{'id': 1, 'name': 'heist'}]\"\n110,\"[{'id': 2, 'name': 'dup'}]\"\n"
        "120,\"[{'id': 1, 'name': 'heist'}, {'id': 3 'name': 'broken'}]\"\nnotanid,[]\n"
    )
    (folder / "credits.csv").write_text(
        "cast,crew,id\n"
        "\"[{'name': 'B Actor', 'order': 1}, {'name': 'A Actor', 'order': 0}]\","
        "\"[{'job': 'Director', 'name': 'Dee Rector'}, {'job': 'Grip', 'name': 'G'}]\",110\n"
    )
    return folder
