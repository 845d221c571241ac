"""A released FusionRec model's movie catalog and its "movie-recommendation" pipeline.

The catalog (FusionCatalog: ids, titles, years, genres, trained vectors; no users) is saved beside the weights, so a
released folder or Hub repo answers typed histories on its own. Like transformers' own custom pipelines, the
pipeline lives apart from the modeling file; config.json's `custom_pipelines` names it, and
`pipeline("movie-recommendation", model=..., trust_remote_code=True)` loads it with the model.

This file imports only torch, safetensors and transformers, so it runs as Hub remote code.
"""

from __future__ import annotations

import datetime
import difflib
import json
import numbers
import os
import re
import unicodedata
from dataclasses import dataclass

from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import Pipeline
from transformers.utils import cached_file

CATALOG_FILE = "catalog.json"
CATALOG_VECTORS_FILE = "catalog_vectors.safetensors"
CATALOG_FORMAT_VERSION = 1
_YEAR = re.compile(r"^(?P<title>.*\S)\s*\((?P<year>\d{4})\)$")
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>the|a|an|les|la|le|il|el|der|die|das)$")
_ID_PREFIXES = {"#": "index", "movie:": "movie", "ml:": "movie", "movie_id:": "movie", "tmdb:": "tmdb", "imdb:": "imdb"}


def normalise_title(title: str) -> str:
    """Case-, accent- and space-insensitive key; "Matrix, The" and "The Matrix" share one."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode() or title
    text = " ".join(text.casefold().split())
    moved = _ARTICLE.match(text)
    return f"{moved['article']} {moved['rest']}" if moved else text


def as_of_seconds(value: str | int | float | datetime.date) -> int:
    """Unix seconds of an "as of" time. "YYYY-MM-DD" (or a date) is the END of that day, UTC, so ratings made that
    day count; a full ISO time or a datetime is taken as given (UTC unless it names a zone); a number is unix
    seconds."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", value):
        try:
            value = datetime.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"as_of {value!r} is not a date; write YYYY-MM-DD (e.g. 2015-01-01).") from None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        midnight = datetime.datetime.combine(value, datetime.time(), tzinfo=datetime.timezone.utc)
        return int((midnight + datetime.timedelta(days=1)).timestamp()) - 1
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"as_of {value!r} is not a date; write YYYY-MM-DD (e.g. 2015-01-01).") from None
    if not isinstance(moment, datetime.datetime):
        raise ValueError(f"as_of {value!r} is not a date; give YYYY-MM-DD, a datetime or unix seconds.")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp())


def check_k(k) -> None:
    """How many movies to return: a positive integer (one larger than the catalog returns the whole catalog)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
        raise ValueError(f"top_k must be a positive integer (e.g. 10), got {k!r}.")


def _is_entry(value) -> bool:
    """A history entry: a title or id, or a (title_or_id, rating) pair."""
    return isinstance(value, str) or (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], numbers.Real)
        and not isinstance(value[1], bool)
    )


def _is_history(value) -> bool:
    return _is_entry(value) or (isinstance(value, (list, tuple)) and len(value) > 0 and all(map(_is_entry, value)))


@dataclass(eq=False, repr=False)
class FusionCatalog:
    """The movies a released model recommends from, row i = movie_index i: MovieLens, TMDB and IMDb ids, title,
    year, genres, and the trained movie vectors (num_movies, hidden). Saved beside the weights as catalog.json and
    catalog_vectors.safetensors (plain JSON and safetensors). It holds no users: people are described by their
    histories.

    Typed references resolve to movies: a title (any case and accents, "Matrix, The" too; add the year when a title
    names several movies: "Heat (1995)"), "#N" (movie_index), "movie:N" / "ml:N" / "movie_id:N" (MovieLens
    movieId), "tmdb:N", "imdb:tt0133093" or bare "tt0133093". A bare number is a title ("1984")."""

    titles: list[str]
    years: list[int | None]
    genres: list[list[str]]
    movie_ids: list[int | None]
    tmdb_ids: list[int | None]
    imdb_ids: list[str | None]
    vectors: Tensor | None = None
    last_rating_time: int | None = None

    def __post_init__(self) -> None:
        for name in ("years", "genres", "movie_ids", "tmdb_ids", "imdb_ids"):
            if len(getattr(self, name)) != len(self.titles):
                raise ValueError(f"FusionCatalog.{name} has {len(getattr(self, name))} rows, titles {len(self.titles)}.")
        self._by_title: dict[str, list[int]] = {}
        for index, title in enumerate(self.titles):
            self._by_title.setdefault(normalise_title(title), []).append(index)
        self._by_id = {
            "movie": {int(value): index for index, value in enumerate(self.movie_ids) if value is not None},
            "tmdb": {int(value): index for index, value in enumerate(self.tmdb_ids) if value is not None},
            "imdb": {str(value).lower(): index for index, value in enumerate(self.imdb_ids) if value is not None},
        }

    def __len__(self) -> int:
        return len(self.titles)

    def __repr__(self) -> str:
        return f"FusionCatalog({len(self)} movies)"

    def label(self, index: int) -> str:
        year = self.years[index]
        return f"{self.titles[index]} ({year})" if year is not None else self.titles[index]

    def movie(self, index: int) -> dict:
        return {
            "movie_index": index,
            "movie_id": self.movie_ids[index],
            "tmdb_id": self.tmdb_ids[index],
            "imdb_id": self.imdb_ids[index],
            "title": self.titles[index],
            "year": self.years[index],
            "genres": list(self.genres[index]),
        }

    def rows(self, ranked: dict[str, Tensor]) -> list[dict]:
        """Ranked movies (`FusionModel.rank_history` or a neighbour search) as one dict per movie: its ids, title,
        year, genres, score, and where given the predicted rating and `because_you_liked`."""
        rows = [{**self.movie(int(index)), "score": float(score)} for index, score in zip(ranked["movie_indices"], ranked["scores"], strict=True)]
        if "predicted_ratings" in ranked:
            for row, rating in zip(rows, ranked["predicted_ratings"], strict=True):
                row["predicted_rating"] = float(rating)
        if "contributions" in ranked:
            for row, contributions in zip(rows, ranked["contributions"], strict=True):
                row["because_you_liked"] = self.reasons(ranked["history"], contributions)
        return rows

    def reasons(self, history: Tensor, contributions: Tensor, *, limit: int = 3) -> list[dict]:
        """The history movies that raised a recommendation's score, largest first (at most `limit`), each with its
        share: its contribution over the sum of the positive ones (`FusionModel.history_contributions`)."""
        positive = contributions.clamp(min=0)
        total = float(positive.sum())
        if total <= 0:
            return []
        order = positive.argsort(descending=True, stable=True)[:limit]
        return [
            {"movie_index": int(history[i]), "title": self.titles[int(history[i])], "year": self.years[int(history[i])],
             "share": float(positive[i]) / total}
            for i in order.tolist() if positive[i] > 0
        ]  # fmt: skip

    # ----- typed references -----

    def resolve(self, reference: str) -> int:
        """The movie_index a typed title or id names; ValueError (one line, with close matches) if none or several."""
        text = reference.strip()
        prefixed = re.fullmatch(r"(?i)(#|movie:|ml:|movie_id:|tmdb:|imdb:)\s*(\S+)", text) or re.fullmatch(
            r"(?i)()(tt\d+)", text
        )
        if prefixed:
            return self._resolve_id(text, _ID_PREFIXES.get(prefixed.group(1).lower(), "imdb"), prefixed.group(2))
        found = self._by_title.get(normalise_title(text), [])
        with_year = _YEAR.match(text)
        if with_year and not found:
            year = int(with_year["year"])
            found = [i for i in self._by_title.get(normalise_title(with_year["title"]), []) if self.years[i] == year]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            options = "; ".join(f"{self.label(i)} [#{i}]" for i in found[:8])
            raise ValueError(f"{text!r} names {len(found)} movies: {options}; add the year, e.g. \"{self.label(found[0])}\".")
        key = normalise_title(with_year["title"] if with_year else text)
        close = difflib.get_close_matches(key, list(self._by_title), n=5, cutoff=0.6)
        suggestions = [self.label(i) for name in close for i in self._by_title[name]][:5]
        hint = f"; did you mean: {'; '.join(suggestions)}?" if suggestions else "; no similar title either."
        raise ValueError(f"unknown movie {text!r}{hint}")

    def _resolve_id(self, text: str, kind: str, value: str) -> int:
        if kind == "index":
            if value.isdigit() and int(value) < len(self):
                return int(value)
            raise ValueError(f"{text!r}: no movie_index {value}; indices run from 0 to {len(self) - 1}.")
        key = value.lower() if kind == "imdb" else (int(value) if value.isdigit() else None)
        if key is None or key not in self._by_id[kind]:
            raise ValueError(f"{text!r}: no movie with that {kind} id in this catalog.")
        return self._by_id[kind][key]

    def typed_history(
        self, history, *, at: int, rating_min: float, rating_max: float
    ) -> tuple[list[int], list[float], list[int]]:
        """Movie indices, ratings and timestamps of a typed history, oldest first. `history`: a title or id, a
        (title_or_id, rating) pair, or a list of either; a bare title or id counts as liked (`rating_max`). A movie
        given twice keeps its later rating, as prepared datasets do. The steps are one second apart, ending at `at`."""
        if not _is_history(history):
            raise ValueError(
                "a history is a list of titles or ids (\"Heat (1995)\", \"tmdb:862\") or of (title_or_id, rating) "
                "pairs, oldest first; give at least one."
            )
        rated: dict[int, float] = {}  # insertion order = time order; a movie given again moves to the end
        for entry in [history] if _is_entry(history) else history:
            reference, rating = (entry, rating_max) if isinstance(entry, str) else (entry[0], float(entry[1]))
            if not rating_min <= rating <= rating_max:
                raise ValueError(f"{reference}={rating:g}: ratings run from {rating_min:g} to {rating_max:g}.")
            index = self.resolve(reference)
            rated.pop(index, None)
            rated[index] = rating
        return list(rated), list(rated.values()), list(range(at - len(rated) + 1, at + 1))

    # ----- files -----

    def save(self, folder: str | os.PathLike) -> None:
        """Write catalog.json and catalog_vectors.safetensors into `folder`, each through a temporary file."""
        if self.vectors is None or self.vectors.shape[0] != len(self):
            raise ValueError(f"FusionCatalog.save needs vectors for its {len(self)} movies.")
        document = {
            "format": "fusionrec-catalog",
            "format_version": CATALOG_FORMAT_VERSION,
            "num_movies": len(self),
            "last_rating_time": self.last_rating_time,
            "movies": {
                "movie_index": list(range(len(self))),
                "movie_id": self.movie_ids,
                "tmdb_id": self.tmdb_ids,
                "imdb_id": self.imdb_ids,
                "title": self.titles,
                "year": self.years,
                "genres": self.genres,
            },
        }
        path = os.path.join(os.fspath(folder), CATALOG_FILE)
        with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False)
        os.replace(f"{path}.tmp", path)
        path = os.path.join(os.fspath(folder), CATALOG_VECTORS_FILE)
        save_file({"movie_vectors": self.vectors.detach().float().cpu().contiguous()}, f"{path}.tmp", metadata={"format": "pt"})
        os.replace(f"{path}.tmp", path)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, **hub_kwargs) -> FusionCatalog:
        """The catalog saved in a folder or a Hub repo, found by transformers' `cached_file` (cache, revision and
        offline mode as for the weights; `hub_kwargs` as for from_pretrained)."""
        name = os.fspath(name_or_path)
        paths = {}
        for filename in (CATALOG_FILE, CATALOG_VECTORS_FILE):
            try:
                paths[filename] = cached_file(name, filename, **hub_kwargs)
            except OSError as error:
                raise ValueError(
                    f"{name} has no {filename}: it was saved without its movie catalog; build a release folder with "
                    "`release.py --model FOLDER --dataset DATA --dry-run` (or call set_movie_catalog)."
                ) from error
        with open(paths[CATALOG_FILE], encoding="utf-8") as handle:
            document = json.load(handle)
        try:
            movies, count = document["movies"], int(document["num_movies"])
            if movies["movie_index"] != list(range(count)):
                raise ValueError(f"{paths[CATALOG_FILE]}: movie_index must run 0..{count - 1} in row order.")
            vectors = load_file(paths[CATALOG_VECTORS_FILE])["movie_vectors"]
            return cls(
                titles=movies["title"], years=movies["year"], genres=movies["genres"], movie_ids=movies["movie_id"],
                tmdb_ids=movies["tmdb_id"], imdb_ids=movies["imdb_id"], vectors=vectors,
                last_rating_time=document["last_rating_time"],
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{paths[CATALOG_FILE]}: not a fusionrec catalog (missing {error}).") from error


class MovieRecommendationPipeline(Pipeline):
    """The "movie-recommendation" task, named in config.json's `custom_pipelines`:

        recommender = pipeline("movie-recommendation", model="you/fusionrec-tmdb", trust_remote_code=True)
        recommender(["Heat (1995)", "The Matrix (1999)"], top_k=10)   # [{"movie_id", "tmdb_id", "title", "year", "genres", "score"}]
        recommender(["Heat (1995)", "Ronin (1998)"], explain=True)     # + "because_you_liked": [{"title", "year", "share"}]
        recommender([[("Heat (1995)", 5.0)], ["tmdb:862", "imdb:tt0133093"]])   # a batch: a list of lists

    A history is a list of titles or ids, or of (title_or_id, rating) pairs, oldest first (FusionCatalog says
    what a reference may be); `as_of="YYYY-MM-DD"` reads it at that time. Scores are cosine similarities against
    the catalog saved with the model; `explain=True` adds the history movies that drove each one
    (`FusionModel.history_contributions`); a movie outside the catalog: `model.similar_to_text(...)`."""

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_processor = False

    def __call__(self, histories, **kwargs):
        if _is_history(histories):
            return super().__call__({"history": histories}, **kwargs)
        if isinstance(histories, (list, tuple)) and histories and all(map(_is_history, histories)):
            return super().__call__([{"history": history} for history in histories], **kwargs)
        raise ValueError(
            "give one history (a list of titles or ids, or of (title_or_id, rating) pairs) or a list of histories."
        )

    def _sanitize_parameters(self, top_k: int | None = None, as_of=None, explain: bool | None = None):
        forward = {key: value for key, value in (("top_k", top_k), ("explain", explain)) if value is not None}
        return ({} if as_of is None else {"as_of": as_of}), forward, {}

    def preprocess(self, inputs: dict, as_of=None) -> dict[str, Tensor]:
        return self.model.history_inputs(inputs["history"], as_of=as_of)

    def _forward(self, inputs: dict[str, Tensor], top_k: int = 10, explain: bool = False) -> dict[str, Tensor]:
        return self.model.rank_history(inputs, k=top_k, explain=bool(explain))

    def postprocess(self, ranked: dict[str, Tensor]) -> list[dict]:
        rows = self.model.movie_catalog().rows(ranked)
        keys = ("movie_id", "tmdb_id", "title", "year", "genres", "score", "because_you_liked")
        return [{key: row[key] for key in keys if key in row} for row in rows]


__all__ = ["FusionCatalog", "MovieRecommendationPipeline", "as_of_seconds", "check_k", "normalise_title"]
