"""The movie catalog as tensors (row i = movie_index i) with the text cache attached when the model reads text;
`MovieCatalog.inputs(indices)` gives a model's movie_inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from fusionrec.data.loading import check_compatible, load_feature_spec, load_tables
from fusionrec.data.text_cache import build_text_cache, default_cache_root
from fusionrec.errors import DatasetError


class _Columns:
    """Column access that returns materialised numpy values (datasets 5's `table[name]` is a lazy `Column`)."""

    def __init__(self, table) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, name: str):
        return self.table[name][:]


def _plain_id(value, *, as_text: bool):
    """A nullable id column's value as int / str / None (datasets' numpy format gives NaN or None for nulls)."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return None
    return str(value) if as_text else int(value)


@dataclass
class MovieCatalog:
    """Every movie's features as tensors, row i = movie_index i; `inputs(indices)` gives a model's movie_inputs."""

    numeric: torch.Tensor
    categorical: dict[str, torch.Tensor]
    multi_valued: dict[str, torch.Tensor]
    texts: list[str]
    titles: list[str]
    years: list[int | None]
    cold_item: torch.Tensor
    num_ratings: torch.Tensor
    text_states: torch.Tensor | None = None
    text_lengths: torch.Tensor | None = None
    movie_ids: list[int | None] | None = None  # MovieLens movieId, TMDB and IMDb ids and display genres: what a
    tmdb_ids: list[int | None] | None = None  # released model's catalog shows (release_catalog)
    imdb_ids: list[str | None] | None = None
    genres: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def release_catalog(self, *, vectors: torch.Tensor | None = None, last_rating_time: int | None = None):
        """The movies as a released model carries them (modeling_fusionrec.FusionCatalog): ids, titles, years,
        genres and `vectors`; it also resolves typed titles and ids."""
        from modeling_fusionrec import FusionCatalog

        missing = [None] * len(self)
        return FusionCatalog(
            titles=self.titles,
            years=self.years,
            genres=self.genres or [[] for _ in self.titles],
            movie_ids=self.movie_ids or missing,
            tmdb_ids=self.tmdb_ids or missing,
            imdb_ids=self.imdb_ids or missing,
            vectors=vectors,
            last_rating_time=last_rating_time,
        )

    @classmethod
    def from_table(cls, movies, spec: dict) -> MovieCatalog:
        # datasets 5 returns a lazy `Column` for table["name"]; `[:]` materialises it (a no-op for arrays/lists).
        movies = _Columns(movies)
        count = len(movies)
        if count != spec["num_movies"] or not np.array_equal(movies["movie_index"], np.arange(count)):
            raise DatasetError("movies table: movie_index must be 0..num_movies-1 in row order; re-run prepare_dataset.py.")
        numeric_names = spec["numeric_features"]["names"]
        numeric = np.stack(movies["numeric"]).astype(np.float32) if numeric_names else np.zeros((count, 0), np.float32)
        multi_valued = {}
        for name, feature in spec["multi_valued_features"].items():
            bags = movies[f"bag_{name}"]
            padded = np.zeros((count, feature["max_length"]), dtype=np.int64)
            lengths = np.array([min(len(bag), feature["max_length"]) for bag in bags])
            flat = np.concatenate([bag[: feature["max_length"]] for bag in bags]) if lengths.sum() else np.zeros(0)
            padded[np.arange(feature["max_length"]) < lengths[:, None]] = flat
            multi_valued[name] = torch.from_numpy(padded)
        years = movies["year"]
        columns = set(movies.table.column_names)
        ids = {
            name: [_plain_id(value, as_text=name == "imdb_id") for value in movies[name]] if name in columns else None
            for name in ("movie_id", "tmdb_id", "imdb_id")
        }
        return cls(
            numeric=torch.from_numpy(numeric),
            categorical={
                name: torch.from_numpy(movies[f"cat_{name}"].astype(np.int64)) for name in spec["categorical_features"]
            },
            multi_valued=multi_valued,
            texts=[str(text) for text in movies["text"]],
            titles=[str(title) for title in movies["title"]],
            years=[None if year is None or not np.isfinite(float(year)) else int(year) for year in years],
            cold_item=torch.from_numpy(np.asarray(movies["cold_item"], dtype=bool)),
            num_ratings=torch.from_numpy(np.asarray(movies["num_ratings"], dtype=np.int64)),
            movie_ids=ids["movie_id"],
            tmdb_ids=ids["tmdb_id"],
            imdb_ids=ids["imdb_id"],
            genres=[[str(g) for g in genres] for genres in movies["genres"]] if "genres" in columns else None,
        )

    def attach_text_cache(self, states: torch.Tensor, lengths: torch.Tensor) -> None:
        self.text_states, self.text_lengths = states, lengths

    def inputs(self, indices: torch.Tensor, *, config) -> dict:
        """movie_inputs for these movie indices, shaped as the model's config asks."""
        inputs = {"movie_indices": indices}
        if config.use_content_features:
            inputs["numeric"] = self.numeric[indices]
            inputs["categorical"] = {name: values[indices] for name, values in self.categorical.items()}
            inputs["multi_valued"] = {name: values[indices] for name, values in self.multi_valued.items()}
        if config.use_text:
            if self.text_states is None:
                inputs["texts"] = [self.texts[i] for i in indices.tolist()]
            else:
                lengths = self.text_lengths[indices]
                longest = max(int(lengths.max()), 1) if len(indices) else 1
                inputs["text_states"] = self.text_states[indices, :longest]
                inputs["text_mask"] = torch.arange(longest) < lengths[:, None]
        return inputs


def load_catalog(
    dataset_dir: str | os.PathLike, config, *, cache_root: str | os.PathLike | None = None, show_progress: bool = True
) -> tuple[MovieCatalog, dict]:
    """The dataset's movie catalog and feature spec, with the text cache attached when the model reads text."""
    spec = load_feature_spec(dataset_dir)
    check_compatible(config, spec, dataset_dir=dataset_dir)
    movies, _ = load_tables(dataset_dir)
    catalog = MovieCatalog.from_table(movies, spec)
    if config.use_text:
        states, lengths = build_text_cache(
            catalog.texts,
            cache_root=cache_root or default_cache_root(),
            encoder_name=config.text_encoder_name_or_path,
            revision=config.text_encoder_revision,
            max_length=config.text_max_length,
            show_progress=show_progress,
        )
        catalog.attach_text_cache(states, lengths)
    return catalog, spec
