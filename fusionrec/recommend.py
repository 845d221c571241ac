"""Top-K movie recommendations for a dataset user or for a typed list of rated movies.

    python recommend.py --model DIR_OR_ID --dataset DIR --user-id 15 [--k 10] [--as-of 2015-06-30]
    python recommend.py --model DIR_OR_ID [--dataset DIR] --history "Heat (1995)=5, toy story=4.5, tmdb:603=4"

--user-id is the dataset's source user id (the `user_id` column of the sequences table, e.g. MovieLens userId).
--as-of YYYY-MM-DD keeps only that user's ratings made on or before that day (UTC, inclusive) and asks for the user
vector at the end of that day.

--history is a comma-separated list of MOVIE=RATING, oldest first. MOVIE is
  * a title, matched case-insensitively ("the matrix"; "Matrix, The" works too); add the year when a title names
    several movies: "Heat (1995)";
  * `#N` for the catalog's movie_index N, `movie:N` (or `ml:N`, `movie_id:N`) for a MovieLens movieId, `tmdb:N`
    for a TMDB id, `imdb:tt0114709` or bare `tt0114709` for an IMDb id.
A bare number is read as a title ("1984", "2012"). Typed ratings are read as the unknown user (index 0) at the
time --as-of names (default: the dataset's last rating time), in the order typed. Without --dataset, a released
model (release.py; best/ and final/ of a training run too) answers from the catalog saved beside its weights.
Movies the person has rated are never recommended. Unknown titles name the closest matches.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence

import numpy as np
import torch

from fusionrec.cli import format_time, load_model, open_session, parse_date, run_command
from fusionrec.data.sequences import UserSequence, history_until
from fusionrec.errors import CommandError
from fusionrec.retrieval import make_search, user_vectors

_ENTRY = re.compile(r"\s*(?P<movie>[^=]+?)\s*=\s*(?P<rating>[-+]?\d+(?:\.\d+)?)\s*(?:[,;]|$)")


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


def typed_sequence(catalog, entries: list[tuple[str, float]], *, at: int, rating_min: float, rating_max: float) -> UserSequence:
    """The unknown user's sequence for typed (title_or_id, rating) entries, resolved as a released model resolves
    them (pipeline_fusionrec.FusionCatalog)."""
    try:
        movies, ratings, timestamps = catalog.typed_history(entries, at=at, rating_min=rating_min, rating_max=rating_max)
    except ValueError as error:
        raise CommandError(str(error)) from None
    return UserSequence(
        user_index=0,
        movies=np.asarray(movies, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=np.asarray(timestamps, dtype=np.int64),
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
    """Top-k recommendations as a dict: who, as of when, the history used, and rows of rank / movie_index / ids /
    title / year / genres / score / predicted_rating."""
    if (user_id is None) == (history is None):
        raise CommandError("give exactly one of --user-id or --history.")
    if k <= 0:
        raise CommandError("--k must be a positive integer.")
    catalog = session.catalog.release_catalog()
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
        entries = _entries(history)
        query_time = as_of if as_of is not None else int(session.spec["time"]["max_timestamp"])
        rating = session.spec["rating"]
        sequence = typed_sequence(catalog, entries, at=query_time, rating_min=rating["min"], rating_max=rating["max"])
        who = {"user_id": None, "user_index": 0}
    movie_vectors = session.movie_vectors()
    users = user_vectors(session.model, [sequence], movie_vectors, as_of=query_time)
    search = make_search(index, movie_vectors)
    indices, scores = search.search(users, [np.unique(sequence.movies)], k)
    found = indices[0] >= 0
    picked = torch.from_numpy(indices[0][found])
    with torch.no_grad():
        predicted = session.model.predict_rating(users.expand(len(picked), -1), movie_vectors[picked]).float()
    ranked = {"movie_indices": picked, "scores": torch.from_numpy(scores[0][found]), "predicted_ratings": predicted}
    return _result(who, catalog, sequence, ranked, query_time=query_time, dataset_user=user_id is not None)


def recommend_from_release(model, *, history: str | list[tuple[str, float]], k: int = 10, as_of: int | None = None) -> dict:
    """recommend() for a typed history without the dataset: the model's own catalog and vectors
    (FusionModel.recommend_for_history's steps), in the same result format."""
    if k <= 0:
        raise CommandError("--k must be a positive integer.")
    entries = _entries(history)
    try:
        catalog = model.movie_catalog()
        inputs = model.history_inputs(entries, as_of=as_of)
        ranked = model.rank_history(inputs, k=k)
    except ValueError as error:
        raise CommandError(str(error)) from None
    query_time = int(inputs["as_of"][0])
    sequence = typed_sequence(catalog, entries, at=query_time, rating_min=model.config.rating_min,
                              rating_max=model.config.rating_max)
    return _result({"user_id": None, "user_index": 0}, catalog, sequence, ranked, query_time=query_time,
                   dataset_user=False)


def _entries(history: str | list[tuple[str, float]]) -> list[tuple[str, float]]:
    entries = parse_history(history) if isinstance(history, str) else list(history)
    if not entries:
        raise CommandError("--history is empty; give at least one MOVIE=RATING, e.g. \"Heat (1995)=5\".")
    return entries


def _result(who: dict, catalog, sequence: UserSequence, ranked: dict, *, query_time: int | None, dataset_user: bool) -> dict:
    return {
        **who,
        "as_of": None if query_time is None else format_time(query_time),
        "history": [
            {"movie_index": int(m), "title": catalog.label(int(m)), "rating": float(r)}
            for m, r in zip(sequence.movies, sequence.ratings, strict=True)
        ],
        "last_rating": format_time(sequence.timestamps[-1]) if dataset_user else None,
        "recommendations": [{"rank": rank, **row} for rank, row in enumerate(catalog.rows(ranked), start=1)],
    }


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
    parser.add_argument(
        "--dataset",
        help="prepared dataset folder the model was trained on (needed for --user-id; without it --history is "
        "answered from the catalog saved with the model)",
    )
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
        if args.dataset is None:
            if args.user_id is not None:
                raise CommandError("--user-id needs --dataset: a released model holds no users, only its movie catalog.")
            if args.index != "exact":
                raise CommandError("--index faiss needs --dataset; a released model ranks its catalog exactly.")
            model = load_model(args.model, device=args.device)
            result = recommend_from_release(model, history=args.history, k=args.k, as_of=as_of)
        else:
            session = open_session(args.model, args.dataset, device=args.device, cache_dir=args.cache_dir)
            result = recommend(session, user_id=args.user_id, history=args.history, k=args.k, as_of=as_of,
                               index=args.index)
        print(json.dumps(result, indent=2) if args.json else format_recommendations(result))
        return 0

    return run_command(body)
