"""Build the vendored test slice of the Kaggle "The Movies Dataset" sample (CC0).

The tests must run from a fresh clone, so they cannot read the full sample; this script cuts a small,
real slice of it. Raw rows are copied byte for byte (quoting, encoding and line endings kept), never
re-serialised, so the slice exercises the same parser paths as the full files.

Selection, deterministic:
  users   every user with at most --max-ratings ratings in ratings_small.csv, plus, for each tmdb id that
          movies_metadata.csv lists twice, the rater with the fewest ratings (ties: lowest userId) of the
          movie that links_small.csv maps to it, so the duplicate rows belong to rated movies;
  ratings every rating of those users;
  links   the links_small.csv and links.csv rows of the movies they rated;
  movie   the movies_metadata.csv, keywords.csv and credits.csv rows (all copies of a repeated id) of
          those movies' tmdb ids, as links_small.csv maps them.

    python tests/data/build_slice.py --source /path/to/the-movies-dataset-sample \\
        --output tests/data/the-movies-dataset-slice
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

FILES = (
    "ratings_small.csv",
    "links_small.csv",
    "links.csv",
    "movies_metadata.csv",
    "keywords.csv",
    "credits.csv",
)
COMMAND = (
    "python tests/data/build_slice.py --source <the-movies-dataset-sample> "
    "--output tests/data/the-movies-dataset-slice"
)


class SliceError(Exception):
    """Source files that are not the unmodified sample; main() prints it in one line and exits 2."""


@dataclass
class RawCsv:
    """A CSV file as its verbatim header bytes, verbatim record bytes and parsed fields."""

    header: bytes
    records: list[bytes]
    columns: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


def split_records(data: bytes) -> list[bytes]:
    """Split CSV bytes into records, each with its own line ending. A record ends at a newline outside
    quotes: with RFC 4180 quoting ("" inside quotes) that is where its quote count is even."""
    if not data.endswith(b"\n"):
        raise ValueError("file does not end with a newline")
    records: list[bytes] = []
    current = b""
    for line in data[:-1].split(b"\n"):
        current += line + b"\n"
        if current.count(b'"') % 2 == 0:
            records.append(current)
            current = b""
    if current:
        raise ValueError("unterminated quoted field at end of file")
    return records


def parse_record(record: bytes) -> list[str]:
    return next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")))


def read_raw_csv(path: Path) -> RawCsv:
    try:
        header, *records = split_records(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SliceError(f"{path}: {exc}; expected the unmodified Kaggle CSV") from None
    columns = parse_record(header)
    rows = [parse_record(r) for r in records]
    bad = next((i for i, row in enumerate(rows) if len(row) != len(columns)), None)
    if bad is not None:
        raise SliceError(f"{path}: record {bad + 1} has {len(rows[bad])} fields, header has {len(columns)}")
    return RawCsv(header, records, columns, rows)


def int_id(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def select_users(
    *, users: list[int], movies: list[int], tmdb_of: dict[int, int], metadata_ids: list[int | None],
    max_ratings: int,
) -> list[int]:  # fmt: skip
    """Light users, plus the lightest rater of each movie whose metadata id is duplicated."""
    per_user = Counter(users)
    chosen = {u for u, n in per_user.items() if n <= max_ratings}
    repeated = {t for t, n in Counter(i for i in metadata_ids if i is not None).items() if n > 1}
    for tmdb in sorted(repeated):
        raters = {u for u, m in zip(users, movies, strict=True) if tmdb_of.get(m) == tmdb}
        if raters:
            chosen.add(min(raters, key=lambda u: (per_user[u], u)))
    return sorted(chosen)


def keep_rows(table: RawCsv, column: str, wanted: set[int]) -> list[int]:
    """Indices of the records whose `column` is an id in `wanted`, in file order."""
    return [i for i, v in enumerate(table.column(column)) if int_id(v) in wanted]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def count_repeats(values: Iterable[int | None]) -> int:
    return sum(n - 1 for n in Counter(v for v in values if v is not None).values())


def build(*, source: Path, max_ratings: int) -> dict[str, bytes]:
    """{file name: slice bytes} for every file in FILES plus PROVENANCE.md."""
    tables = {name: read_raw_csv(source / name) for name in FILES}
    ratings, links_small = tables["ratings_small.csv"], tables["links_small.csv"]
    users = [int(v) for v in ratings.column("userId")]
    movies = [int(v) for v in ratings.column("movieId")]
    tmdb_of = {
        int(m): t
        for m, t in zip(links_small.column("movieId"), map(int_id, links_small.column("tmdbId")), strict=True)
        if t is not None
    }
    metadata_ids = [int_id(v) for v in tables["movies_metadata.csv"].column("id")]
    kept_users = select_users(
        users=users, movies=movies, tmdb_of=tmdb_of, metadata_ids=metadata_ids, max_ratings=max_ratings
    )
    user_set = set(kept_users)
    kept_movies = {m for u, m in zip(users, movies, strict=True) if u in user_set}
    kept_tmdb = {tmdb_of[m] for m in kept_movies if m in tmdb_of}
    kept = {
        "ratings_small.csv": keep_rows(ratings, "userId", user_set),
        "links_small.csv": keep_rows(links_small, "movieId", kept_movies),
        "links.csv": keep_rows(tables["links.csv"], "movieId", kept_movies),
        "movies_metadata.csv": keep_rows(tables["movies_metadata.csv"], "id", kept_tmdb),
        "keywords.csv": keep_rows(tables["keywords.csv"], "id", kept_tmdb),
        "credits.csv": keep_rows(tables["credits.csv"], "id", kept_tmdb),
    }
    out = {
        name: tables[name].header + b"".join(tables[name].records[i] for i in kept[name]) for name in FILES
    }

    def kept_column(name: str, column: str) -> list[str]:
        values = tables[name].column(column)
        return [values[i] for i in kept[name]]

    per_user = Counter(users)
    facts = {
        "users": len(kept_users),
        "ratings": len(kept["ratings_small.csv"]),
        "movies": len(kept_movies),
        "movies_with_tmdb": len(kept_movies & set(tmdb_of)),
        "links_small_missing_tmdb": sum(1 for v in kept_column("links_small.csv", "tmdbId") if not v.strip()),
        "metadata_repeats": count_repeats(map(int_id, kept_column("movies_metadata.csv", "id"))),
        "keywords_repeats": count_repeats(map(int_id, kept_column("keywords.csv", "id"))),
        "fixed_popularity_rows": sum(1 for i in kept["movies_metadata.csv"] if i >= 5000),
        "extra_users": [u for u in kept_users if per_user[u] > max_ratings],
    }
    out["PROVENANCE.md"] = provenance(
        out=out, kept=kept, max_ratings=max_ratings, facts=facts,
        source_sha=lambda name: sha256((source / name).read_bytes()),
    )  # fmt: skip
    return out


UPSTREAM = """\
## Where the rows come from
Dataset: **"The Movies Dataset"** by Rounak Banik (Kaggle, `rounakbanik/the-movies-dataset`), released
under **CC0 1.0 (public domain)**. Every row here is a real row of that dataset, copied byte for byte from
the project's benchmark sample (`the-movies-dataset-sample`), which was assembled from public GitHub
copies of the Kaggle files:

| file | sample source (repository, path, commit) | sample vs. original |
|---|---|---|
| ratings_small.csv | `rkamodhini20/Data-Science-Final-Project`, `ratings_small.csv`, `a58c189c` | complete, byte-identical (sha256 `82179533...` = Kaggle LFS pointer) |
| links_small.csv | `rkamodhini20/Data-Science-Final-Project`, `links_small.csv`, `a58c189c` | complete, byte-identical |
| links.csv | `AsthaGupta28/Movie-Recommendation-System`, `links.csv`, `b61ab8d9` | complete, byte-identical |
| movies_metadata.csv | rows 1-5000: `rkamodhini20/Data-Science-Final-Project`, `movies_metadata_small.csv`, `a58c189c` (the original's first 5,000 rows, verbatim); rows 5001-6946: `machadolucas/Movies-Recommender`, `movies_metadata_small.csv`, `60f5656e` | 6,946 of ~45.5k rows; in rows 5001-6946 `popularity` was rewritten as the shortest decimal of the same float64 (a pandas float artifact fix) |
| keywords.csv | rows 1-99: `rosnilt/data`, `keywords.csv`, `7e4ceeb1`; rows 100-9175: `ayush1999guptA/Movie-Recommender-System`, `dataset/keywords.csv`, `56669a0e` | 9,175 of ~46.4k rows, verbatim, original order |
| credits.csv | `rosnilt/data`, `credits.csv`, `7e4ceeb1` | the original's first 99 rows; a final newline added |

File names, headers, column order, cell formats, quoting and line endings match the original:
`ratings_small.csv`, `links_small.csv` and `links.csv` use CRLF; `movies_metadata.csv`, `keywords.csv` and
`credits.csv` use LF. Rows keep the sample's order.
"""


def provenance(
    *, out: dict[str, bytes], kept: dict[str, list[int]], max_ratings: int, facts: dict,
    source_sha: Callable[[str], str],
) -> bytes:  # fmt: skip
    extra = ", ".join(str(u) for u in facts["extra_users"]) or "none"
    lines = [
        '# Provenance: test slice of Kaggle "The Movies Dataset" (CC0 1.0)',
        "",
        "A small real slice for the tests, so they run from any fresh clone. Built by `build_slice.py`",
        "(next to this folder) from the project's benchmark sample; re-running it reproduces these bytes:",
        "",
        f"    {COMMAND} --max-ratings {max_ratings}",
        "",
        "## How the slice was selected",
        f"- **Users:** every user with at most {max_ratings} ratings in ratings_small.csv (20 is the"
        " dataset's minimum), plus, for each tmdb id that movies_metadata.csv lists twice, the rater with the"
        f" fewest ratings of the movie links_small.csv maps to it (users {extra}), so the duplicate rows"
        " belong to rated movies.",
        "- **Ratings:** every rating of those users, in file order.",
        "- **Links:** the links_small.csv and links.csv rows of the movies they rated.",
        "- **Movie rows:** the movies_metadata.csv, keywords.csv and credits.csv rows of those movies' tmdb ids"
        " (through links_small.csv), every copy of a repeated id included.",
        "- Rows are copied byte for byte from the sample; none is edited, re-quoted or re-encoded.",
        "",
        f"{facts['users']} users, {facts['ratings']:,} ratings, {facts['movies']:,} movies"
        f" ({facts['movies_with_tmdb']:,} with a tmdbId).",
        "",
        "Quirks of the raw data kept on purpose (the prepare code skips and counts them):",
        f"- {facts['links_small_missing_tmdb']} links_small.csv rows with an empty tmdbId, for rated movies;",
        f"- {facts['metadata_repeats']} repeated ids in movies_metadata.csv and {facts['keywords_repeats']}"
        " in keywords.csv (identical repeats, as in the original);",
        "- the sample has none of the original's three malformed movies_metadata.csv rows, so neither does this.",
        "",
        f"{facts['fixed_popularity_rows']} movies_metadata.csv rows come from the sample's rows 5001-6946"
        " (the `popularity` fix above).",
        "",
        "## Files",
        "| file | rows | bytes | sha256 | sha256 of the sample file |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {len(kept[name]):,} | {len(out[name]):,} | `{sha256(out[name])}` | `{source_sha(name)}` |"
            for name in FILES
        ),
        "",
        UPSTREAM,
    ]
    return "\n".join(lines).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="the-movies-dataset-sample folder")
    parser.add_argument("--output", type=Path, required=True, help="slice folder to (re)write")
    parser.add_argument(
        "--max-ratings", type=int, default=22, help="keep users with at most this many ratings"
    )
    args = parser.parse_args(argv)
    missing = [name for name in FILES if not (args.source / name).is_file()]
    try:
        if missing:
            raise SliceError(f"{args.source} lacks {', '.join(missing)}; point --source at the sample")
        files = build(source=args.source, max_ratings=args.max_ratings)
    except SliceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(args.output / name, data)
        print(f"{name:<20} {len(data):>9,} bytes  {sha256(data)}")
    print(f"total {sum(map(len, files.values())):,} bytes in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
