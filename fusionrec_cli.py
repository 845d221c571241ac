"""Shared plumbing of the user-facing commands (evaluate_fusionrec.py, recommend.py, export_embeddings.py).

One place for: loading a model (`AutoModel.from_pretrained(..., trust_remote_code=True)`) together with a prepared
dataset it must match, the catalog's movie vectors, user vectors "as of" a date, exact and FAISS top-K search with the
user's history excluded, date parsing, atomic writes, and turning bad input into ONE clear line (exit code 2).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fusionrec_data import (
    DatasetError,
    MovieCatalog,
    UserSequence,
    atomic_write_text,
    load_catalog,
    load_tables,
    pad_histories,
    read_sequences,
)

EXIT_BAD_INPUT = 2


class CommandError(Exception):
    """Bad input to a command; the message is one line saying what is wrong and how to fix it."""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command body; bad input (CommandError, DatasetError) prints `error: ...` on one line and gives exit 2."""
    try:
        return body() or 0
    except (CommandError, DatasetError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ----- loading -----

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(name_or_path: str | os.PathLike, *, device: str = "cpu"):
    """A fusionrec model from a folder saved by save_pretrained or a Hub id, in eval mode on `device`."""
    from transformers import AutoModel

    name = os.fspath(name_or_path)
    if not Path(name).exists() and not _HUB_ID.match(name):
        raise CommandError(f"{name}: model folder not found; give a folder written by save_pretrained or a Hub id.")
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise CommandError(f"{name}: no config.json there; give a folder written by save_pretrained.")
    try:
        model = AutoModel.from_pretrained(name, trust_remote_code=True)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{name}: cannot load the model ({one_line(error)[:300]}).") from error
    if getattr(model.config, "model_type", None) != "fusionrec":
        raise CommandError(f"{name}: model_type is {model.config.model_type!r}, not a fusionrec model.")
    return model.to(resolve_device(device)).eval()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_dataset_dir(dataset_dir: str | os.PathLike) -> Path:
    path = Path(dataset_dir)
    if not path.is_dir():
        raise CommandError(
            f"{path}: dataset folder not found; make it with `python prepare_dataset.py --source ... --output {path}`."
        )
    return path


@contextmanager
def quiet_libraries():
    """No per-file progress bars from transformers (weights) or datasets (parquet -> arrow) while loading: the
    commands print their own progress, and an error stays the only line on stderr."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.utils.logging.enable_progress_bar()
        if transformers_bars:
            transformers_logging.enable_progress_bar()


@dataclass
class Session:
    """A model and the prepared dataset it was trained on, loaded once and shared by a command."""

    model: object
    dataset_dir: Path
    spec: dict
    catalog: MovieCatalog
    movies: object  # pandas DataFrame: movie_index, movie_id, tmdb_id, imdb_id, title, year
    rows: list[dict] = field(repr=False)
    user_ids: np.ndarray = field(repr=False)
    batch_size: int = 512
    show_progress: bool = False
    _movie_vectors: torch.Tensor | None = field(default=None, repr=False)

    def movie_vectors(self) -> torch.Tensor:
        if self._movie_vectors is None:
            self._movie_vectors = catalog_vectors(
                self.model, self.catalog, batch_size=self.batch_size, show_progress=self.show_progress
            )
        return self._movie_vectors

    def sequence(self, row: int) -> UserSequence:
        data = self.rows[row]
        return UserSequence(
            user_index=data["user_index"],
            movies=data["movie_index"].astype(np.int64),
            ratings=data["rating"].astype(np.float32),
            timestamps=data["timestamp"].astype(np.int64),
        )

    def user_row(self, user_id: int) -> int:
        found = np.flatnonzero(self.user_ids == user_id)
        if not len(found):
            low, high = (int(self.user_ids.min()), int(self.user_ids.max())) if len(self.user_ids) else (0, 0)
            raise CommandError(
                f"unknown user id {user_id}; this dataset's {len(self.user_ids):,} user ids run from {low} to {high}."
            )
        return int(found[0])

    def describe_movie(self, index: int) -> str:
        year = self.catalog.years[index]
        return f"{self.catalog.titles[index]} ({year})" if year is not None else self.catalog.titles[index]


def open_session(
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 512,
    show_progress: bool = False,
) -> Session:
    """Load the model and the dataset, and check they come from the same feature spec (one line if not)."""
    dataset_dir = check_dataset_dir(dataset)
    with quiet_libraries():
        loaded = load_model(model, device=device)
        catalog, spec = load_catalog(dataset_dir, loaded.config, cache_root=cache_dir, show_progress=show_progress)
        movies, sequences = load_tables(dataset_dir)
    id_columns = ["movie_index", "movie_id", "tmdb_id", "imdb_id", "title", "year"]
    table = movies.with_format(None).select_columns([c for c in id_columns if c in movies.column_names]).to_pandas()
    user_ids = np.asarray(sequences.with_format("numpy")["user_id"], dtype=np.int64)
    return Session(
        model=loaded,
        dataset_dir=dataset_dir,
        spec=spec,
        catalog=catalog,
        movies=table,
        rows=read_sequences(sequences),
        user_ids=user_ids,
        batch_size=batch_size,
        show_progress=show_progress,
    )


# ----- vectors -----


def to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(inner, device) for key, inner in value.items()}
    return value


@torch.no_grad()
def catalog_vectors(model, catalog: MovieCatalog, *, batch_size: int = 512, show_progress: bool = False) -> torch.Tensor:
    """Every movie's vector (num_movies, hidden), float32, computed once per command."""
    model.eval()
    vectors = []
    for start in tqdm(range(0, len(catalog), batch_size), desc="movie vectors", disable=not show_progress):
        indices = torch.arange(start, min(start + batch_size, len(catalog)))
        inputs = to_device(catalog.inputs(indices, config=model.config), model.device)
        vectors.append(model.calculate_movie_feature(**inputs).float())
    return torch.cat(vectors) if vectors else torch.zeros(0, model.config.hidden_size)


def history_until(sequence: UserSequence, as_of: int | None) -> UserSequence:
    """The ratings of a time-ordered sequence made at or before `as_of` (unix seconds; None: all)."""
    if as_of is None:
        return sequence
    keep = sequence.timestamps <= as_of
    return UserSequence(sequence.user_index, sequence.movies[keep], sequence.ratings[keep], sequence.timestamps[keep])


@torch.no_grad()
def user_vectors(
    model,
    sequences: Sequence[UserSequence],
    movie_vectors: torch.Tensor,
    *,
    as_of: int | np.ndarray | None = None,
    batch_size: int = 256,
    user_indices: bool = True,
) -> torch.Tensor:
    """User vectors (len(sequences), hidden), float32, as of one time for all, one per sequence, or (None) each
    user's last rating. Ratings after `as_of` are dropped BEFORE keeping the most recent max_history_length steps, so
    a long history read as of an early date still sees its last steps before that date. `user_indices=False` reads
    every sequence as the unknown user (index 0)."""
    model.eval()
    device = movie_vectors.device
    times = None if as_of is None else np.broadcast_to(np.asarray(as_of, dtype=np.int64), (len(sequences),))
    parts = []
    for start in range(0, len(sequences), batch_size):
        stop = min(start + batch_size, len(sequences))
        chunk = [history_until(s, None if times is None else int(times[i])) for i, s in zip(range(start, stop), sequences[start:stop], strict=True)]
        batch = to_device(pad_histories(chunk, max_length=model.config.max_history_length), device)
        users = batch.pop("user_indices") if user_indices else None
        batch.pop("user_indices", None)
        query = None if times is None else torch.from_numpy(np.array(times[start:stop], dtype=np.int64)).to(device)
        parts.append(
            model.calculate_user_feature(**batch, movie_vectors=movie_vectors, user_indices=users, as_of=query).float()
        )
    return torch.cat(parts) if parts else torch.zeros(0, movie_vectors.shape[1], device=device)


# ----- top-K search with the history excluded -----


class ExactSearch:
    """Exact top-K by batched matmul over the catalog (or the candidate movies)."""

    name = "exact"

    def __init__(self, movie_vectors: torch.Tensor, candidate_mask: np.ndarray | None = None) -> None:
        self.movie_vectors = movie_vectors.float()
        self.blocked = None
        if candidate_mask is not None:
            self.blocked = ~torch.as_tensor(np.asarray(candidate_mask, dtype=bool), device=movie_vectors.device)

    @torch.no_grad()
    def search(self, users: torch.Tensor, exclude: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) of shape (batch, k), best first; -1 / -inf pad rows with fewer than k candidates."""
        scores = users.float().to(self.movie_vectors.device) @ self.movie_vectors.T
        if self.blocked is not None:
            scores.masked_fill_(self.blocked, float("-inf"))
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        if len(rows):
            columns = torch.from_numpy(np.concatenate(exclude).astype(np.int64)).to(scores.device)
            scores[torch.from_numpy(rows).to(scores.device), columns] = float("-inf")
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return _pad_results(top.indices.cpu().numpy(), top.values.cpu().numpy(), k)


class FaissSearch:
    """Top-K from a FAISS inner-product index over the movie vectors (cosine: the vectors are L2-normalised). Fetches
    k + (the most history movies of any user in the batch) and then drops each user's history, so exclusion never
    leaves fewer than k results. `factory` is a faiss.index_factory string: "Flat" (exact) or e.g. "HNSW32"."""

    name = "faiss"

    def __init__(
        self,
        movie_vectors: torch.Tensor,
        candidate_mask: np.ndarray | None = None,
        *,
        factory: str = "Flat",
        params: str | None = None,
    ) -> None:
        try:
            import faiss
        except ImportError as error:
            raise CommandError("--index faiss needs the faiss package: pip install faiss-cpu (or use --index exact).") from error
        vectors = movie_vectors.detach().float().cpu().numpy()
        self.ids = (
            np.arange(len(vectors), dtype=np.int64)
            if candidate_mask is None
            else np.flatnonzero(np.asarray(candidate_mask, dtype=bool)).astype(np.int64)
        )
        self.is_candidate = np.zeros(len(vectors), dtype=bool)
        self.is_candidate[self.ids] = True
        chosen = np.ascontiguousarray(vectors[self.ids])
        try:
            self.index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise CommandError(f"--faiss-factory {factory!r}: faiss cannot build it ({one_line(error)[:200]}).") from error
        if not self.index.is_trained:
            self.index.train(chosen)
        self.index.add(chosen)
        if params:  # search-time settings, e.g. "efSearch=256" (HNSW) or "nprobe=16" (IVF)
            try:
                faiss.ParameterSpace().set_index_parameters(self.index, params)
            except RuntimeError as error:
                raise CommandError(f"--faiss-params {params!r}: {one_line(error)[:200]}") from error
        self.factory = factory

    def search(self, users: torch.Tensor, exclude: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        exclude = [e[self.is_candidate[e]] for e in exclude]
        fetch = min(k + max((len(e) for e in exclude), default=0), len(self.ids))
        queries = np.ascontiguousarray(users.detach().float().cpu().numpy())
        if fetch == 0:
            return _pad_results(np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32), k)
        scores, positions = self.index.search(queries, fetch)
        found = np.where(positions >= 0, self.ids[np.clip(positions, 0, None)], -1)
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        values = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row, seen in enumerate(exclude):
            keep = (found[row] >= 0) & ~np.isin(found[row], seen)
            picked = found[row][keep][:k]
            indices[row, : len(picked)] = picked
            values[row, : len(picked)] = scores[row][keep][:k]
        return indices, values


def _pad_results(indices: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.where(np.isfinite(scores), indices, -1).astype(np.int64)
    if indices.shape[1] < k:
        pad = k - indices.shape[1]
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return indices, scores.astype(np.float32)


def make_search(
    kind: str,
    movie_vectors: torch.Tensor,
    candidate_mask: np.ndarray | None = None,
    *,
    faiss_factory: str = "Flat",
    faiss_params: str | None = None,
):
    if kind == "exact":
        return ExactSearch(movie_vectors, candidate_mask)
    if kind == "faiss":
        return FaissSearch(movie_vectors, candidate_mask, factory=faiss_factory, params=faiss_params)
    raise CommandError(f"unknown index {kind!r}; choose exact or faiss.")


# ----- dates, files -----


def parse_date(text: str) -> int:
    """YYYY-MM-DD (UTC) -> unix seconds of the END of that day, so ratings made on that day count ("as of" the
    date, inclusive). A full ISO time (YYYY-MM-DDTHH:MM:SS, UTC unless it names a zone) is taken as given."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
            return int((day + dt.timedelta(days=1)).timestamp()) - 1
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--as-of {text!r}: not a date; write YYYY-MM-DD (e.g. 2015-01-01).") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


def format_time(seconds: int) -> str:
    return dt.datetime.fromtimestamp(int(seconds), tz=dt.timezone.utc).strftime("%Y-%m-%d")


__all__ = [
    "CommandError",
    "ExactSearch",
    "FaissSearch",
    "Session",
    "atomic_write_text",
    "catalog_vectors",
    "check_dataset_dir",
    "format_time",
    "history_until",
    "load_model",
    "make_search",
    "open_session",
    "parse_date",
    "run_command",
    "to_device",
    "user_vectors",
]
