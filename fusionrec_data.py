"""From a prepared dataset folder to model inputs: the movie catalog as tensors, the frozen-encoder text cache,
per-split training windows and evaluation examples, and the training collator (with uniform negatives and logQ).

The folder layout is docs/DATASET_FORMAT.md; every split rule here follows ../shared/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

SPLITS = ("leave_one_out", "temporal", "cold_items")


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message is one line naming the file or field and the fix."""


def load_feature_spec(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / "feature_spec.json"
    if not path.is_file():
        raise DatasetError(f"{path}: not found; make the dataset folder with `python prepare_dataset.py --output DIR`.")
    return json.loads(path.read_text(encoding="utf-8"))


def load_tables(dataset_dir: str | os.PathLike):
    """The movies and sequences tables, read with `datasets.load_dataset` exactly as a user would."""
    from datasets import load_dataset

    dataset_dir = str(dataset_dir)
    load_feature_spec(dataset_dir)
    cache_dir = tables_cache_dir(dataset_dir)
    movies = load_dataset(dataset_dir, "movies", split="train", cache_dir=cache_dir)
    sequences = load_dataset(dataset_dir, "sequences", split="train", cache_dir=cache_dir)
    return movies.with_format("numpy"), sequences


def tables_cache_dir(dataset_dir: str | os.PathLike) -> str:
    """A datasets cache folder keyed by this folder's files (path, size, mtime). datasets 5.2 keys the Arrow cache of
    a local parquet folder by the folder's *name* and its YAML configs only, so two prepared datasets with the same
    folder name (e.g. `synthetic`), or a re-prepared one, would silently load the first one's stale tables."""
    import datasets

    root = Path(dataset_dir).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".parquet", ".md", ".json"))
    stamp = "\n".join(f"{p.relative_to(root)}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}" for p in files)
    digest = hashlib.sha256(f"{root}\n{stamp}".encode()).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "fusionrec_tables" / digest)


def check_compatible(config, spec: dict, *, dataset_dir: str | os.PathLike) -> None:
    """Stop with one line when a model and a dataset come from different feature specs."""
    from configuration_fusionrec import FusionRecConfig

    expected = FusionRecConfig.from_feature_spec(spec).feature_signature()
    actual = config.feature_signature()
    for key, value in expected.items():
        if actual[key] != value:
            raise DatasetError(
                f"{dataset_dir}: feature spec differs from the model's ({key}: dataset {value!r} vs model "
                f"{actual[key]!r}); use the dataset the model was trained on."
            )


# ----- the movie catalog -----


class _Columns:
    """Column access that returns materialised numpy values (datasets 5's `table[name]` is a lazy `Column`)."""

    def __init__(self, table) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, name: str):
        return self.table[name][:]


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

    def __len__(self) -> int:
        return len(self.texts)

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


# ----- text cache: the frozen encoder runs once per movie text -----


def text_cache_dir(cache_root: str | os.PathLike, *, encoder_name: str, revision: str | None, max_length: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{encoder_name}@{revision or 'default'}")[-80:]
    digest = hashlib.sha256(f"{encoder_name}\0{revision}\0{max_length}".encode()).hexdigest()[:12]
    return Path(cache_root) / f"{slug}-{max_length}-{digest}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_text_cache(
    texts: list[str],
    *,
    cache_root: str | os.PathLike,
    encoder_name: str,
    revision: str | None,
    max_length: int,
    batch_size: int = 64,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states (movies, max_length, hidden) float16 and lengths for `texts`, computed only for texts not yet in
    the cache (keyed by encoder name, revision, max length and text hash). The cache file is replaced atomically."""
    from modeling_fusionrec import encode_texts, load_text_encoder

    directory = text_cache_dir(cache_root, encoder_name=encoder_name, revision=revision, max_length=max_length)
    directory.mkdir(parents=True, exist_ok=True)
    index_path, states_path = directory / "index.json", directory / "states.safetensors"
    known: dict[str, int] = json.loads(index_path.read_text()) if index_path.is_file() and states_path.is_file() else {}
    stored = load_file(states_path) if known else {}
    hashes = [text_hash(text) for text in texts]
    missing = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in known}.items())
    if missing:
        encoder, tokenizer = load_text_encoder(encoder_name, revision=revision)
        new_states, new_lengths = [], []
        batches = range(0, len(missing), batch_size)
        for start in tqdm(batches, desc="text cache", unit="batch", disable=not show_progress):
            chunk = [text for _, text in missing[start : start + batch_size]]
            states, mask = encode_texts(chunk, encoder=encoder, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
            new_states.append(torch.nn.functional.pad(states, (0, 0, 0, max_length - states.shape[1])))
            new_lengths.append(mask.sum(dim=1))
        old_states = stored.get("states")
        all_states = torch.cat(([old_states] if old_states is not None else []) + new_states)
        all_lengths = torch.cat(([stored["lengths"]] if known else []) + new_lengths)
        offset = len(known)
        known.update({h: offset + i for i, (h, _) in enumerate(missing)})
        stored = {"states": all_states.contiguous(), "lengths": all_lengths.contiguous()}
        atomic_save_safetensors(stored, states_path)
        atomic_write_text(index_path, json.dumps(known, sort_keys=True))
    rows = torch.tensor([known[h] for h in hashes], dtype=torch.long)
    if torch.equal(rows, torch.arange(len(stored["lengths"]))):
        return stored["states"], stored["lengths"]  # the usual case (one catalog per cache): no second copy
    return stored["states"][rows], stored["lengths"][rows]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write through a temporary file and a rename, so a reader never sees half a file (parent folders are made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, temporary)
    os.replace(temporary, path)


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


def default_cache_root() -> Path:
    return Path(os.environ.get("FUSIONREC_CACHE", Path.home() / ".cache" / "fusionrec")) / "text"


# ----- sequences: training windows and evaluation examples per split -----


@dataclass
class UserSequence:
    user_index: int
    movies: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray


def read_sequences(sequences) -> list[dict]:
    """Rows of the sequences table as dicts of numpy arrays."""
    table = sequences.with_format("numpy")
    columns = (
        "user_index",
        "movie_index",
        "rating",
        "timestamp",
        "loo_valid_position",
        "loo_test_position",
        "temporal_valid_start",
        "temporal_test_start",
    )
    data = {name: table[name][:] for name in columns}
    return [
        {name: (np.asarray(values[i]) if name in ("movie_index", "rating", "timestamp") else int(values[i])) for name, values in data.items()}
        for i in range(len(table))
    ]


def _take(row: dict, keep) -> UserSequence:
    return UserSequence(
        user_index=row["user_index"],
        movies=row["movie_index"][keep].astype(np.int64),
        ratings=row["rating"][keep].astype(np.float32),
        timestamps=row["timestamp"][keep].astype(np.int64),
    )


def train_sequence(row: dict, split: str, cold_item: np.ndarray) -> UserSequence:
    """The part of one user's sequence that training may see under `split`."""
    n = len(row["movie_index"])
    if split == "leave_one_out":
        end = row["loo_valid_position"] if row["loo_valid_position"] >= 0 else n
        return _take(row, slice(0, end))
    if split == "temporal":
        return _take(row, slice(0, row["temporal_valid_start"]))
    if split == "cold_items":
        warm = np.flatnonzero(~cold_item[row["movie_index"]])
        return _take(row, warm[:-2] if len(warm) >= 3 else warm)
    raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")


def training_windows(sequences: list[UserSequence], *, window: int) -> list[UserSequence]:
    """Chop each sequence into consecutive windows of at most `window` steps, ending at its last step, so every
    step is a training target exactly once."""
    windows = []
    for sequence in sequences:
        for end in range(len(sequence.movies), 0, -window):
            part = slice(max(0, end - window), end)
            windows.append(
                UserSequence(sequence.user_index, sequence.movies[part], sequence.ratings[part], sequence.timestamps[part])
            )
    return windows


@dataclass
class EvaluationExamples:
    """One row per (user, target): the history before it (time-ordered), the target and its rating and time."""

    histories: list[UserSequence]
    targets: np.ndarray
    target_ratings: np.ndarray
    target_timestamps: np.ndarray
    candidate_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)


def evaluation_examples(rows: list[dict], split: str, stage: str, cold_item: np.ndarray) -> EvaluationExamples:
    """Validation or test events of `split` (PROTOCOL.md). cold_items: every rating of a cold movie is a test event,
    its history the user's earlier ratings without cold movies, ranked among cold movies only; its validation is the
    leave-one-out validation of the warm sequences."""
    if stage not in ("validation", "test"):
        raise DatasetError(f"unknown stage {stage!r}; choose validation or test.")
    histories, targets, ratings, times = [], [], [], []

    def add(row: dict, history, position: int) -> None:
        histories.append(_take(row, history))
        targets.append(row["movie_index"][position])
        ratings.append(row["rating"][position])
        times.append(row["timestamp"][position])

    for row in rows:
        n = len(row["movie_index"])
        if split == "leave_one_out":
            position = row["loo_valid_position" if stage == "validation" else "loo_test_position"]
            if position >= 0:
                add(row, slice(0, position), position)
        elif split == "temporal":
            start = row["temporal_valid_start" if stage == "validation" else "temporal_test_start"]
            end = row["temporal_test_start"] if stage == "validation" else n
            if start < end:
                add(row, slice(0, start), start)
        elif split == "cold_items":
            cold = cold_item[row["movie_index"]]
            if stage == "validation":
                warm = np.flatnonzero(~cold)
                if len(warm) >= 3:
                    add(row, warm[:-2], warm[-2])
            else:
                for position in np.flatnonzero(cold):
                    add(row, np.flatnonzero(~cold[:position]), position)
        else:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    candidate_mask = cold_item.copy() if split == "cold_items" and stage == "test" else None
    return EvaluationExamples(
        histories=histories,
        targets=np.asarray(targets, dtype=np.int64),
        target_ratings=np.asarray(ratings, dtype=np.float32),
        target_timestamps=np.asarray(times, dtype=np.int64),
        candidate_mask=candidate_mask,
    )


def pad_histories(sequences: list[UserSequence], *, max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded history tensors of the most recent `max_length` steps of each sequence."""
    length = max([min(len(s.movies), max_length) for s in sequences] + [0])
    batch = len(sequences)
    movies = np.zeros((batch, length), np.int64)
    ratings = np.zeros((batch, length), np.float32)
    timestamps = np.zeros((batch, length), np.int64)
    mask = np.zeros((batch, length), bool)
    for row, sequence in enumerate(sequences):
        kept = slice(max(0, len(sequence.movies) - max_length), None)
        count = len(sequence.movies[kept])
        movies[row, :count] = sequence.movies[kept]
        ratings[row, :count] = sequence.ratings[kept]
        timestamps[row, :count] = sequence.timestamps[kept]
        mask[row, :count] = True
    return {
        "history_movie_indices": torch.from_numpy(movies),
        "history_ratings": torch.from_numpy(ratings),
        "history_timestamps": torch.from_numpy(timestamps),
        "history_mask": torch.from_numpy(mask),
        "user_indices": torch.tensor([s.user_index for s in sequences], dtype=torch.long),
    }


class TrainingCollator:
    """Pads a batch of windows and builds its candidate movies: every movie in the batch plus `num_negatives`
    uniform samples from `negative_pool`, with log_q = log P(candidate is in the set) for the logQ correction:
    1 - P(none of the batch's targets is it) * P(no uniform draw is it), targets drawn by training frequency."""

    def __init__(
        self,
        catalog: MovieCatalog,
        *,
        config,
        movie_frequency: np.ndarray,
        negative_pool: np.ndarray,
        num_negatives: int,
        seed: int,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.negative_pool = torch.from_numpy(np.asarray(negative_pool, dtype=np.int64))
        self.num_negatives = num_negatives
        share = np.asarray(movie_frequency, dtype=np.float64)
        self.frequency_share = torch.from_numpy(share / max(share.sum(), 1.0))
        self.in_pool = torch.zeros(len(share), dtype=torch.bool)
        self.in_pool[self.negative_pool] = True
        self.seed = seed
        self.calls = 0

    def negative_generator(self, batch_key) -> torch.Generator:
        """The generator for one batch's negatives: a pure function of (seed, batch_key), so a resumed run (or any
        process) draws exactly the negatives of the uninterrupted run for the same batch."""
        digest = hashlib.sha256(f"{self.seed}\0{batch_key!r}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def __call__(self, windows: list[UserSequence], *, batch_key=None) -> dict:
        """`batch_key` (e.g. (epoch, batch number)) seeds this batch's negatives; without one, the call count is the
        key (deterministic for a fresh collator called in order, but not for a resumed or sharded loader)."""
        if batch_key is None:
            batch_key = self.calls
        self.calls += 1
        batch = pad_histories(windows, max_length=self.config.max_history_length)
        in_batch = batch["history_movie_indices"][batch["history_mask"]]
        generator = self.negative_generator(batch_key)
        picks = torch.randint(len(self.negative_pool), (self.num_negatives,), generator=generator)
        candidates = torch.unique(torch.cat((in_batch, self.negative_pool[picks])))
        targets = int(batch["history_mask"].sum())
        missed_in_batch = (1.0 - self.frequency_share[candidates]) ** targets
        missed_uniform = torch.where(self.in_pool[candidates], (1.0 - 1.0 / len(self.negative_pool)) ** self.num_negatives, 1.0)
        probability = 1.0 - missed_in_batch * missed_uniform
        movie_inputs = self.catalog.inputs(candidates, config=self.config)
        movie_inputs["log_q"] = torch.log(probability.clamp(min=1e-12)).float()
        batch["movie_inputs"] = movie_inputs
        return batch


def movie_frequency(sequences: list[UserSequence], num_movies: int) -> np.ndarray:
    counts = np.zeros(num_movies, dtype=np.int64)
    if sequences:
        np.add.at(counts, np.concatenate([s.movies for s in sequences]), 1)
    return counts


__all__ = [
    "SPLITS",
    "DatasetError",
    "EvaluationExamples",
    "MovieCatalog",
    "TrainingCollator",
    "UserSequence",
    "build_text_cache",
    "check_compatible",
    "evaluation_examples",
    "default_cache_root",
    "load_catalog",
    "load_feature_spec",
    "load_tables",
    "movie_frequency",
    "pad_histories",
    "read_sequences",
    "train_sequence",
    "training_windows",
]
