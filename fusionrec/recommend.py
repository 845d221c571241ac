"""Top-K movie recommendations for a dataset user or for a typed list of rated movies.

    python recommend.py --model DIR_OR_ID --dataset DIR --user-id 15 [--k 10] [--as-of 2015-06-30]
    python recommend.py --model DIR_OR_ID --dataset DIR --history "Heat (1995)=5, toy story=4.5, tmdb:603=4"

--user-id is the dataset's source user id (the `user_id` column of the sequences table, e.g. MovieLens userId).
--as-of YYYY-MM-DD keeps only that user's ratings made on or before that day (UTC, inclusive) and asks for the user
vector at the end of that day.

--history is a comma-separated list of MOVIE=RATING, oldest first. MOVIE is
  * a title, matched case-insensitively ("the matrix"; "Matrix, The" works too); add the year when a title names
    several movies: "Heat (1995)";
  * `#N` for the catalog's movie_index N, `ml:N` (or `movie_id:N`) for a MovieLens movieId, `tmdb:N` for a TMDB id,
    `imdb:tt0114709` or bare `tt0114709` for an IMDb id.
A bare number is read as a title ("1984", "2012"). Typed ratings are read as the unknown user (index 0) at the
time --as-of names (default: the dataset's last rating time), in the order typed.
Movies the person has rated are never recommended. Unknown titles name the closest matches.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusionrec.cli import format_time, open_session, parse_date, run_command
from fusionrec.data.sequences import UserSequence, history_until
from fusionrec.errors import CommandError
from fusionrec.retrieval import make_search, user_vectors

_ENTRY = re.compile(r"\s*(?P<movie>[^=]+?)\s*=\s*(?P<rating>[-+]?\d+(?:\.\d+)?)\s*(?:[,;]|$)")
_YEAR = re.compile(r"^(?P<title>.*\S)\s*\((?P<year>\d{4})\)$")
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>the|a|an|les|la|le|il|el|der|die|das)$")


def normalise_title(title: str) -> str:
    """Case-, accent- and space-insensitive key; "Matrix, The" and "The Matrix" share one."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode() or title
    text = " ".join(text.casefold().split())
    moved = _ARTICLE.match(text)
    return f"{moved['article']} {moved['rest']}" if moved else text


def parse_history(text: str) -> list[tuple[str, float]]:
    """"A=5, B (1995)=4.5" -> [("A", 5.0), ("B (1995)", 4.5)]. Titles may hold commas; each entry ends at its
    `=RATING`."""
    entries, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _ENTRY.match(text, position)
        if not match or match.end() == position:
            rest = text[position:].strip()
            raise CommandError(f"--history: cannot read {rest[:60]!r}; write MOVIE=RATING pairs separated by commas.")
        entries.append((match["movie"].strip(), float(match["rating"])))
        position = match.end()
    if not entries:
        raise CommandError("--history is empty; give at least one MOVIE=RATING, e.g. \"Heat (1995)=5\".")
    return entries


@dataclass
class MovieLookup:
    """Resolves typed movie references (titles with optional years, #index, ml:, tmdb:, imdb: ids)."""

    titles: list[str]
    years: list[int | None]
    ids: dict[str, dict]

    @classmethod
    def from_session(cls, session) -> MovieLookup:
        movies = session.movies
        ids = {}
        for column, prefix in (("movie_id", "ml"), ("tmdb_id", "tmdb"), ("imdb_id", "imdb")):
            if column in movies:
                values = movies[column]
                ids[prefix] = {
                    (str(value).lower() if prefix == "imdb" else int(value)): int(index)
                    for index, value in zip(movies["movie_index"], values, strict=True)
                    if value is not None and value == value
                }
        return cls(titles=session.catalog.titles, years=session.catalog.years, ids=ids)

    def __post_init__(self) -> None:
        self.by_title: dict[str, list[int]] = {}
        for index, title in enumerate(self.titles):
            self.by_title.setdefault(normalise_title(title), []).append(index)

    def label(self, index: int) -> str:
        year = self.years[index]
        return f"{self.titles[index]} ({year})" if year is not None else self.titles[index]

    def resolve(self, reference: str) -> int:
        text = reference.strip()
        prefixed = re.fullmatch(r"(?i)(#|ml:|movie_id:|tmdb:|imdb:)\s*(\S+)", text) or re.fullmatch(
            r"(?i)()(tt\d+)", text
        )
        if prefixed:
            return self._resolve_id(text, prefixed.group(1).lower(), prefixed.group(2))
        found = self.by_title.get(normalise_title(text), [])
        with_year = _YEAR.match(text)
        if with_year:
            year = int(with_year["year"])
            dated = [i for i in self.by_title.get(normalise_title(with_year["title"]), []) if self.years[i] == year]
            found = found or dated
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            options = "; ".join(f"{self.label(i)} [#{i}]" for i in found[:8])
            raise CommandError(f"{text!r} names {len(found)} movies: {options}; add the year, e.g. \"{self.label(found[0])}\".")
        return self._unknown(text)

    def _resolve_id(self, text: str, prefix: str, value: str) -> int:
        if prefix == "#":
            if value.isdigit() and int(value) < len(self.titles):
                return int(value)
            raise CommandError(f"{text!r}: no movie_index {value}; indices run from 0 to {len(self.titles) - 1}.")
        kind = {"ml:": "ml", "movie_id:": "ml", "tmdb:": "tmdb", "imdb:": "imdb", "": "imdb"}[prefix]
        table = self.ids.get(kind, {})
        key = value.lower() if kind == "imdb" else (int(value) if value.isdigit() else None)
        if key is None or key not in table:
            raise CommandError(f"{text!r}: no movie with that {kind} id in this dataset.")
        return table[key]

    def _unknown(self, text: str) -> int:
        key = normalise_title(_YEAR.match(text)["title"] if _YEAR.match(text) else text)
        close = difflib.get_close_matches(key, list(self.by_title), n=5, cutoff=0.6)
        suggestions = [self.label(i) for name in close for i in self.by_title[name]][:5]
        hint = f"; did you mean: {'; '.join(suggestions)}?" if suggestions else "; no similar title either."
        raise CommandError(f"unknown movie {text!r}{hint}")


def typed_sequence(session, entries: list[tuple[str, float]], *, at: int) -> UserSequence:
    lookup = MovieLookup.from_session(session)
    low, high = session.spec["rating"]["min"], session.spec["rating"]["max"]
    movies, ratings = [], []
    for reference, rating in entries:
        if not low <= rating <= high:
            raise CommandError(f"{reference}={rating:g}: ratings run from {low:g} to {high:g}.")
        index = lookup.resolve(reference)
        if index in movies:  # a movie typed twice keeps the later rating (as prepared datasets do)
            position = movies.index(index)
            del movies[position], ratings[position]
        movies.append(index)
        ratings.append(rating)
    count = len(movies)
    return UserSequence(
        user_index=0,
        movies=np.asarray(movies, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=np.arange(at - count + 1, at + 1, dtype=np.int64),
    )


def recommend(
    session,
    *,
    user_id: int | None = None,
    history: str | list[tuple[str, float]] | None = None,
    k: int = 10,
    as_of: int | None = None,
    index: str = "exact",
) -> dict:
    """Top-k recommendations as a dict: who, as of when, the history used, and rows of movie_index / ids / title /
    year / score / predicted_rating."""
    if (user_id is None) == (history is None):
        raise CommandError("give exactly one of --user-id or --history.")
    if k <= 0:
        raise CommandError("--k must be a positive integer.")
    if user_id is not None:
        row = session.user_row(user_id)
        sequence = session.sequence(row)
        if as_of is not None:
            if not (sequence.timestamps <= as_of).any():
                first = format_time(sequence.timestamps[0]) if len(sequence.timestamps) else "never"
                raise CommandError(
                    f"user {user_id} has no ratings on or before {format_time(as_of)} (first rating {first}); "
                    "choose a later --as-of."
                )
            sequence = history_until(sequence, as_of)
        if not len(sequence.movies):
            raise CommandError(f"user {user_id} has no ratings in this dataset.")
        who = {"user_id": user_id, "user_index": sequence.user_index}
        query_time = as_of
    else:
        entries = parse_history(history) if isinstance(history, str) else list(history)
        if not entries:
            raise CommandError("--history is empty; give at least one MOVIE=RATING, e.g. \"Heat (1995)=5\".")
        query_time = as_of if as_of is not None else int(session.spec["time"]["max_timestamp"])
        sequence = typed_sequence(session, entries, at=query_time)
        who = {"user_id": None, "user_index": 0}
    movie_vectors = session.movie_vectors()
    users = user_vectors(session.model, [sequence], movie_vectors, as_of=query_time)
    search = make_search(index, movie_vectors)
    indices, scores = search.search(users, [np.unique(sequence.movies)], k)
    picked = [(int(i), float(s)) for i, s in zip(indices[0], scores[0], strict=True) if i >= 0]
    predicted = []
    if picked:
        chosen = movie_vectors[[i for i, _ in picked]]
        predicted = session.model.predict_rating(users.expand(len(picked), -1), chosen).float().tolist()
    movies = session.movies.set_index("movie_index")
    rows = []
    for rank, ((movie, score), rating) in enumerate(zip(picked, predicted, strict=True), start=1):
        info = movies.loc[movie]
        rows.append(
            {
                "rank": rank,
                "movie_index": movie,
                "movie_id": _plain(info.get("movie_id")),
                "tmdb_id": _plain(info.get("tmdb_id")),
                "title": session.catalog.titles[movie],
                "year": session.catalog.years[movie],
                "score": score,
                "predicted_rating": float(rating),
            }
        )
    return {
        **who,
        "as_of": None if query_time is None else format_time(query_time),
        "history": [
            {"movie_index": int(m), "title": session.describe_movie(int(m)), "rating": float(r)}
            for m, r in zip(sequence.movies, sequence.ratings, strict=True)
        ],
        "last_rating": format_time(sequence.timestamps[-1]) if user_id is not None else None,
        "recommendations": rows,
    }


def _plain(value):
    if value is None or (isinstance(value, float) and value != value):
        return None
    return int(value) if isinstance(value, (int, float, np.integer, np.floating)) else value


def format_recommendations(result: dict) -> str:
    who = f"user {result['user_id']}" if result["user_id"] is not None else "the typed history"
    when = f" as of {result['as_of']}" if result["as_of"] else ""
    lines = [f"Top {len(result['recommendations'])} for {who}{when}, from {len(result['history'])} rated movies:"]
    rows = result["recommendations"]
    width = max([len(r["title"]) for r in rows] + [5])
    lines.append(f"{'rank':>4}  {'movie_index':>11}  {'title':<{width}}  {'year':>4}  {'score':>7}  {'rating':>6}")
    for r in rows:
        year = "" if r["year"] is None else str(r["year"])
        lines.append(
            f"{r['rank']:>4}  {r['movie_index']:>11}  {r['title']:<{width}}  {year:>4}  {r['score']:>7.4f}  "
            f"{r['predicted_rating']:>6.2f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="folder written by save_pretrained, or a Hub id")
    parser.add_argument("--dataset", required=True, help="prepared dataset folder the model was trained on")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", type=int, help="the dataset's source user id")
    who.add_argument("--history", help='typed ratings: "TITLE_OR_ID=RATING, ..."')
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--as-of", help="YYYY-MM-DD: use ratings up to the end of that day (UTC)")
    parser.add_argument("--index", choices=("exact", "faiss"), default="exact")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", help="text-cache root (default ~/.cache/fusionrec/text)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        as_of = parse_date(args.as_of) if args.as_of else None
        if args.history is not None:
            parse_history(args.history)  # bad syntax fails before the model loads
        session = open_session(args.model, args.dataset, device=args.device, cache_dir=args.cache_dir)
        result = recommend(session, user_id=args.user_id, history=args.history, k=args.k, as_of=as_of, index=args.index)
        print(json.dumps(result, indent=2) if args.json else format_recommendations(result))
        return 0

    return run_command(body)
