"""From a model and a catalog to rankings: every movie's vector, user vectors "as of" a time, and top-K search
(exact batched matmul, or FAISS) with each user's history excluded. Shared by training's validation, evaluation,
recommendations and the export.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fusionrec.data.catalog import MovieCatalog
from fusionrec.data.sequences import Sequences, UserSequence, gather_windows
from fusionrec.errors import CommandError, one_line


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
    return torch.cat(vectors) if vectors else torch.zeros(0, model.config.vector_size)


@torch.no_grad()
def user_vectors(
    model,
    sequences: Sequence[UserSequence] | Sequences,
    movie_vectors: torch.Tensor,
    *,
    as_of: int | np.ndarray | None = None,
    batch_size: int = 256,
    user_indices: bool = True,
) -> torch.Tensor:
    """User vectors (len(sequences), hidden), float32, as of one time for all, one per sequence, or (None) each
    user's last rating. Ratings after `as_of` are dropped BEFORE keeping the most recent max_history_length steps, so
    a long history read as of an early date still sees its last steps before that date. `sequences` is a list or
    Sequences (views on flat columns, batched by `gather_windows` with no per-sequence Python).
    `user_indices=False` reads every sequence as the unknown user (index 0)."""
    model.eval()
    device = movie_vectors.device
    sequences = Sequences.from_list(sequences)
    times = None if as_of is None else np.broadcast_to(np.asarray(as_of, dtype=np.int64), (len(sequences),))
    if times is not None:
        sequences = sequences.until(times)
    parts = []
    for start in range(0, len(sequences), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(sequences)))
        batch = to_device(gather_windows(sequences, indices, max_length=model.config.max_history_length), device)
        users = batch.pop("user_indices") if user_indices else None
        batch.pop("user_indices", None)
        batch.pop("target_mask")
        query = None if times is None else torch.from_numpy(times[start : start + len(indices)].copy()).to(device)
        parts.append(
            model.calculate_user_feature(**batch, movie_vectors=movie_vectors, user_indices=users, as_of=query).float()
        )
    return torch.cat(parts) if parts else torch.zeros(0, movie_vectors.shape[1], device=device)


@torch.no_grad()
def prefix_user_vectors(
    model, sequences: Sequences, movie_vectors: torch.Tensor, *, as_of: np.ndarray | None = None, batch_size: int = 256
) -> torch.Tensor:
    """`user_vectors` for histories of which many are prefixes of one another (a user's evaluation examples, each
    its earlier ratings). A history that fits the window starts at its first step, so its state is a causal state of
    the longest fitting history with the same first step: those are encoded once each and read at every member's
    length. Longer histories, whose windows all start elsewhere, are encoded on their own. `as_of`: as in
    `user_vectors`, at or after each history's last step."""
    if "history_lengths" not in inspect.signature(model.calculate_user_feature).parameters:
        return user_vectors(model, sequences, movie_vectors, as_of=as_of, batch_size=batch_size)  # saved before it
    model.eval()
    lengths = sequences.lengths()
    vectors = torch.zeros(len(sequences), movie_vectors.shape[1], device=movie_vectors.device)
    fits = np.flatnonzero(lengths <= model.config.max_history_length)
    longer = np.flatnonzero(lengths > model.config.max_history_length)
    if len(longer):
        vectors[torch.from_numpy(longer)] = user_vectors(
            model, sequences.subset(longer), movie_vectors, as_of=None if as_of is None else as_of[longer],
            batch_size=batch_size)  # fmt: skip
    if not len(fits):
        return vectors
    users, starts = sequences.user_index, sequences.starts  # an empty history's start is the next one's first step
    order = fits[np.lexsort((-lengths[fits], users[fits], starts[fits]))]  # by first step and user, the longest first
    first = np.r_[True, (starts[order][1:] != starts[order][:-1]) | (users[order][1:] != users[order][:-1])]
    group = np.cumsum(first) - 1
    rank = np.arange(len(order)) - np.flatnonzero(first)[group]
    carriers = order[first]
    reads = np.repeat(lengths[carriers][:, None], rank.max() + 1, axis=1)
    reads[group, rank] = lengths[order]
    times = None
    if as_of is not None:
        times = np.repeat(np.asarray(as_of, dtype=np.int64)[carriers][:, None], rank.max() + 1, axis=1)
        times[group, rank] = as_of[order]
    device, carried = movie_vectors.device, sequences.subset(carriers)
    reads = torch.from_numpy(reads).to(device)
    times = None if times is None else torch.from_numpy(times).to(device)
    for start in range(0, len(carriers), batch_size):
        part = slice(start, min(start + batch_size, len(carriers)))
        batch = gather_windows(carried, torch.arange(part.start, part.stop), max_length=model.config.max_history_length)
        batch.pop("target_mask")
        read = model.calculate_user_feature(**to_device(batch, device), movie_vectors=movie_vectors,
                                            history_lengths=reads[part], as_of=None if times is None else times[part])
        members = (group >= part.start) & (group < part.stop)
        vectors[torch.from_numpy(order[members])] = read.float()[group[members] - part.start, rank[members]]
    return vectors


@torch.no_grad()
def dated_user_vectors(model, sequences: Sequences, movie_vectors: torch.Tensor, *, as_of: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """User vectors as of several times each, (len(sequences), dates, hidden), equal to `user_vectors` once per date.
    Each history is encoded once, its window cut at the latest date, and every date whose own window starts at the
    same step (it only cuts that window's end) reads its causal state from it; the others (a long history whose window
    as of an earlier date starts earlier) are encoded as of their own date."""
    model.eval()
    window = model.config.max_history_length
    as_of = np.asarray(as_of, dtype=np.int64)
    latest = sequences.until(as_of.max(axis=1, initial=np.iinfo(np.int64).min))
    start = np.maximum(latest.starts, latest.stops - window)
    vectors = torch.zeros(len(sequences), as_of.shape[1], movie_vectors.shape[1], device=movie_vectors.device)
    for first in range(0, len(sequences), batch_size):
        indices = np.arange(first, min(first + batch_size, len(sequences)))
        batch = to_device(gather_windows(latest, indices, max_length=window), movie_vectors.device)
        batch.pop("target_mask")
        query = torch.from_numpy(as_of[indices]).to(movie_vectors.device)
        vectors[torch.from_numpy(indices)] = model.calculate_user_feature(**batch, movie_vectors=movie_vectors, as_of=query).float()
    for date in range(as_of.shape[1]):
        cut = sequences.until(as_of[:, date])
        own = np.flatnonzero(np.maximum(cut.starts, cut.stops - window) != start)
        if len(own):
            vectors[torch.from_numpy(own), date] = user_vectors(model, cut.subset(own), movie_vectors, as_of=as_of[own, date], batch_size=batch_size)
    return vectors


class ExactSearch:
    """Exact top-K by matmul over the catalog, or over the candidate movies alone when a split restricts them. The
    movies are scored a block at a time, so each block's scores are masked and cut to the top K while they are in
    cache, and only K per block are merged: the full (users x movies) score matrix is never written out."""

    name = "exact"

    def __init__(self, movie_vectors: torch.Tensor, candidate_mask: np.ndarray | None = None, *, block_size: int = 8192) -> None:
        vectors, self.candidates, self.column_of = movie_vectors.float(), None, None
        if candidate_mask is not None:
            self.candidates = torch.from_numpy(np.flatnonzero(np.asarray(candidate_mask, dtype=bool))).to(vectors.device)
            self.column_of = torch.full((len(vectors),), -1, dtype=torch.long, device=vectors.device)
            self.column_of[self.candidates] = torch.arange(len(self.candidates), device=vectors.device)
            vectors = vectors[self.candidates]
        self.vectors, self.block_size = vectors, block_size

    @torch.no_grad()
    def search(self, users: torch.Tensor, exclude: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) of shape (batch, k), best first; -1 / -inf pad rows with fewer than k candidates."""
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        movies = np.concatenate(exclude).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        return self.search_pairs(users, (rows, movies), k)

    @torch.no_grad()
    def search_pairs(self, users: torch.Tensor, exclude: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` with the exclusions as flat (user row, movie) arrays, repeats allowed. Scored in float32 even
        under a command's autocast (--mixed-precision): a ranking is decided by small differences."""
        with torch.autocast(self.vectors.device.type, enabled=False):
            return self._search_pairs(users.float().to(self.vectors.device), exclude, k)

    def _search_pairs(self, users: torch.Tensor, exclude: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        device = self.vectors.device
        rows, columns = (torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device) for a in exclude)
        if self.column_of is not None:
            columns = self.column_of[columns]
            rows, columns = rows[columns >= 0], columns[columns >= 0]
        block_scores, block_columns = [torch.full((len(users), 0), float("-inf"), device=device)], []
        for start in range(0, len(self.vectors), self.block_size):
            scores = users @ self.vectors[start : start + self.block_size].T
            inside = (columns >= start) & (columns < start + len(scores[0]))
            scores[rows[inside], columns[inside] - start] = float("-inf")
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            block_scores.append(top.values)
            block_columns.append(top.indices + start)
        scores = torch.cat(block_scores, dim=1)
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        columns = torch.cat(block_columns, dim=1).gather(1, top.indices) if block_columns else top.indices
        indices = columns if self.candidates is None else self.candidates[columns]
        return _pad_results(indices.cpu().numpy(), top.values.cpu().numpy(), k)


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
