"""What the user-facing commands share (evaluation, recommend, export): loading a model
(`AutoModel.from_pretrained(..., trust_remote_code=True)`) together with the prepared dataset it must match, date
parsing, and turning bad input into ONE clear line (exit code 2).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from fusionrec.data.catalog import MovieCatalog, load_catalog
from fusionrec.data.loading import load_feature_spec, load_tables
from fusionrec.data.sequences import SequenceRows, UserSequence, read_sequences
from fusionrec.errors import CommandError, InputError, first_line, one_line
from fusionrec.growth import grow_model
from fusionrec.retrieval import catalog_vectors

EXIT_BAD_INPUT = 2
PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command body; bad input (any InputError: a bad option, dataset, model or output) prints `error: ...` on
    one line and gives exit 2."""
    try:
        return body() or 0
    except InputError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are CommandErrors, so `run_command` prints them as ONE line with exit code 2
    (parse inside the command body)."""

    def error(self, message: str):
        raise CommandError(f"{self.prog}: {message}")


# What loading a damaged checkpoint raises: a truncated or foreign weights file (SafetensorError), a config.json that
# is no JSON (OSError) or holds a field of the wrong type (ValueError, TypeError), weights of the wrong shape (RuntimeError).
CHECKPOINT_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)
CHECKPOINT_FIX = "save it again with save_pretrained or use another checkpoint."


def checkpoint_problem(error: BaseException) -> str:
    """What is wrong with a checkpoint that failed to load, in a few words."""
    text = first_line(error)
    if "ignore_mismatched_sizes" in text:  # transformers points at a load report that quiet_libraries held back
        return "its weights do not fit the sizes in its config.json"
    return text[:300]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(text: str) -> bool:
    """"owner/name", the shape of a Hub repo id."""
    return bool(_HUB_ID.match(text))


def load_model(name_or_path: str | os.PathLike, *, device: str = "cpu"):
    """A fusionrec model from a folder saved by save_pretrained or a Hub id, in eval mode on `device`."""
    from transformers import AutoModel

    name = os.fspath(name_or_path)
    if not Path(name).exists() and not is_hub_id(name):
        raise CommandError(f"{name}: model folder not found; give a folder written by save_pretrained or a Hub id.")
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise CommandError(f"{name}: no config.json there; give a folder written by save_pretrained.")
    try:
        with quiet_libraries():
            model = AutoModel.from_pretrained(name, trust_remote_code=True)
    except CHECKPOINT_ERRORS as error:
        raise CommandError(f"{name}: cannot load the model ({checkpoint_problem(error)}); {CHECKPOINT_FIX}") from None
    if getattr(model.config, "model_type", None) != "fusionrec":
        raise CommandError(f"{name}: model_type is {model.config.model_type!r}, not a fusionrec model.")
    return model.to(resolve_device(device)).eval()


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """--mixed-precision, as train_accelerate.py has it, for the commands that compute vectors."""
    parser.add_argument(
        "--mixed-precision", choices=tuple(PRECISIONS), default="no",
        help="compute the towers under autocast to this precision (bf16: a GPU, or a CPU with AVX512-BF16); "
        "vectors are returned and rankings scored in float32",
    )  # fmt: skip


def autocast(model, precision: str):
    """The autocast context a command computes its vectors in (`--mixed-precision`; "no": none)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(model.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


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
    """While loading: no per-file progress bars from transformers (weights) or datasets (parquet -> arrow), and their
    log records (transformers' load report, datasets' read errors) held back: replayed when the load succeeds,
    dropped when it fails, so that the command's one-line error is all stderr shows."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    held: list[logging.LogRecord] = []
    hold = logging.Handler()
    hold.emit = held.append
    loggers = [logging.getLogger(name) for name in ("transformers", "datasets")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [hold], False
    try:
        yield
    except BaseException:
        held.clear()
        raise
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
        for record in held:
            logging.getLogger(record.name).handle(record)
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
    rows: SequenceRows = field(repr=False)
    user_ids: np.ndarray = field(repr=False)
    batch_size: int = 512
    show_progress: bool = False
    _movie_vectors: dict[str | None, torch.Tensor] = field(default_factory=dict, repr=False)

    def movie_vectors(self, split: str | None = None) -> torch.Tensor:
        """Every movie's vector as `split` sees the catalog (MovieCatalog.for_split), computed once per view."""
        catalog = self.catalog if split is None else self.catalog.for_split(split)
        view = None if catalog is self.catalog else split
        if view not in self._movie_vectors:
            self._movie_vectors[view] = catalog_vectors(
                self.model, catalog, batch_size=self.batch_size, show_progress=self.show_progress
            )
        return self._movie_vectors[view]

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
    model,
    dataset: str | os.PathLike,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 512,
    show_progress: bool = False,
) -> Session:
    """Load the model (a folder or Hub id, or an already loaded model) and the dataset, and check they come from the
    same feature spec (one line if not). A model trained before the dataset was updated (prepare_dataset.py
    --update) grows to it (fusionrec/growth.py)."""
    dataset_dir = check_dataset_dir(dataset)
    with quiet_libraries():
        loaded = load_model(model, device=device) if isinstance(model, str | os.PathLike) else model
        loaded = grow_model(loaded, load_feature_spec(dataset_dir), dataset_dir=dataset_dir)
        catalog, spec = load_catalog(dataset_dir, loaded.config, cache_root=cache_dir, show_progress=show_progress)
        movies, sequences = load_tables(dataset_dir)
    id_columns = ["movie_index", "movie_id", "tmdb_id", "imdb_id", "title", "year"]
    table = movies.with_format(None).select_columns([c for c in id_columns if c in movies.column_names]).to_pandas()
    rows = read_sequences(sequences)
    return Session(
        model=loaded,
        dataset_dir=dataset_dir,
        spec=spec,
        catalog=catalog,
        movies=table,
        rows=rows,
        user_ids=rows.scalars["user_id"],
        batch_size=batch_size,
        show_progress=show_progress,
    )


def parse_date(text: str) -> int:
    """YYYY-MM-DD (UTC) -> unix seconds of the END of that day, so ratings made on that day count ("as of" the
    date, inclusive). A full ISO time (YYYY-MM-DDTHH:MM:SS, UTC unless it names a zone) is taken as given. The model's
    own reading of "as of" (pipeline_fusionrec.as_of_seconds), so the command and a released model agree."""
    from pipeline_fusionrec import as_of_seconds

    try:
        return as_of_seconds(text.strip())
    except ValueError:
        raise CommandError(f"--as-of {text!r}: not a date; write YYYY-MM-DD (e.g. 2015-01-01).") from None


def format_time(seconds: int) -> str:
    return dt.datetime.fromtimestamp(int(seconds), tz=dt.timezone.utc).strftime("%Y-%m-%d")
