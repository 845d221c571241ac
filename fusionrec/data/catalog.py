"""The movie catalog as tensors (row i = movie_index i) with the text cache attached when the model reads text;
`MovieCatalog.inputs(indices)` gives a model's movie_inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from fusionrec.data.loading import check_compatible, load_feature_spec, load_tables
from fusionrec.data.text_cache import build_text_cache, default_cache_root
from fusionrec.errors import DatasetError


def padded_bags(column, max_length: int) -> np.ndarray:
    """A list<int> column -> (rows, max_length) int64, each bag's first max_length entries, right-padded with 0."""
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.zeros((len(lengths), max_length), dtype=np.int64)
    kept = position < max_length
    padded[row[kept], position[kept]] = values[kept]
    return padded


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
    post_release_columns: torch.Tensor | None = None  # bool per numeric column: measured after release
    movie_ids: list[int | None] | None = None  # MovieLens movieId, TMDB and IMDb ids and display genres: what a
    tmdb_ids: list[int | None] | None = None  # released model's catalog shows (release_catalog)
    imdb_ids: list[str | None] | None = None
    genres: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def for_split(self, split: str) -> MovieCatalog:
        """The catalog as a split may see it. cold_items stands for movies new to the system, which have no votes,
        popularity or revenue yet: a held-out movie's post-release features are missing wherever the model sees it
        (PROTOCOL, "Information known at the time"). Other splits see the catalog as it is."""
        return self.without_post_release(self.cold_item) if split == "cold_items" else self

    def without_post_release(self, movies: torch.Tensor) -> MovieCatalog:
        """A copy in which the `movies` (a bool mask) have no post-release features (missing, as for a new movie)."""
        if self.post_release_columns is None or not (self.post_release_columns.any() and movies.any()):
            return self
        numeric = self.numeric.clone()
        numeric[movies[:, None] & self.post_release_columns[None, :]] = float("nan")
        return replace(self, numeric=numeric)

    def release_catalog(self, *, vectors: torch.Tensor | None = None, last_rating_time: int | None = None):
        """The movies as a released model carries them (pipeline_fusionrec.FusionCatalog): ids, titles, years,
        genres and `vectors`; it also resolves typed titles and ids."""
        from pipeline_fusionrec import FusionCatalog

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
        """From the movies table (a datasets Dataset, as `load_tables` returns it, or a pyarrow Table), column-wise."""
        table = movies if isinstance(movies, pa.Table) else movies.with_format("arrow")[:]
        count = table.num_rows
        if count != spec["num_movies"] or not np.array_equal(table["movie_index"].to_numpy(), np.arange(count)):
            raise DatasetError("movies table: movie_index must be 0..num_movies-1 in row order; re-run prepare_dataset.py.")
        width = len(spec["numeric_features"]["names"])
        numeric = pc.list_flatten(table["numeric"]).to_numpy(zero_copy_only=False).astype(np.float32).reshape(count, width)
        multi_valued = {
            name: torch.from_numpy(padded_bags(table[f"bag_{name}"], feature["max_length"]))
            for name, feature in spec["multi_valued_features"].items()
        }
        return cls(
            numeric=torch.from_numpy(numeric),
            categorical={
                name: torch.from_numpy(table[f"cat_{name}"].to_numpy().astype(np.int64)) for name in spec["categorical_features"]
            },
            multi_valued=multi_valued,
            texts=table["text"].to_pylist(),
            titles=table["title"].to_pylist(),
            years=table["year"].to_pylist(),
            cold_item=torch.from_numpy(table["cold_item"].to_numpy(zero_copy_only=False).astype(bool)),
            num_ratings=torch.from_numpy(table["num_ratings"].to_numpy().astype(np.int64)),
            post_release_columns=torch.tensor(
                [name in spec["numeric_features"].get("post_release", ()) for name in spec["numeric_features"]["names"]],
                dtype=torch.bool,
            ),
            **{
                field: table[column].to_pylist() if column in table.column_names else None
                for field, column in (("movie_ids", "movie_id"), ("tmdb_ids", "tmdb_id"), ("imdb_ids", "imdb_id"),
                                      ("genres", "genres"))
            },  # fmt: skip
        )

    def attach_text_cache(self, states: torch.Tensor, lengths: torch.Tensor) -> None:
        self.text_states, self.text_lengths = states, lengths

    def inputs(self, indices: torch.Tensor, *, config, text_states: bool = True) -> dict:
        """movie_inputs for these movie indices, shaped as the model's config asks (`text_states=False`: without the
        cached text states, for `text_inputs` to add where they live)."""
        inputs = {"movie_indices": indices}
        if config.use_content_features:
            inputs["numeric"] = self.numeric[indices]
            inputs["categorical"] = {name: values[indices] for name, values in self.categorical.items()}
            inputs["multi_valued"] = {name: values[indices] for name, values in self.multi_valued.items()}
        if config.use_text:
            if self.text_states is None:
                inputs["texts"] = [self.texts[i] for i in indices.tolist()]
            elif text_states:
                inputs.update(self.text_inputs(indices))
        return inputs

    def text_inputs(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cached text states and mask of these movies, on the device the states live on (see `on_device`)."""
        indices = indices.to(self.text_states.device)
        lengths = self.text_lengths[indices]
        longest = max(int(lengths.max()), 1) if len(indices) else 1
        return {
            "text_states": self.text_states[indices, :longest],
            "text_mask": torch.arange(longest, device=lengths.device) < lengths[:, None],
        }

    def on_device(self, device: torch.device | str) -> MovieCatalog:
        """A copy whose text states sit on `device` (the frozen states are gathered there, never copied per batch)."""
        if self.text_states is None:
            return self
        return replace(self, text_states=self.text_states.to(device), text_lengths=self.text_lengths.to(device))


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
