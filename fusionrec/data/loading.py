"""Opening a prepared dataset folder (docs/DATASET_FORMAT.md): its feature spec, its two tables read with
`datasets.load_dataset` exactly as a user would, and the check that a model and a dataset share one feature spec.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from fusionrec.data.records import POST_RELEASE_FEATURES
from fusionrec.errors import DatasetError, first_line
from fusionrec.io import WRITE_ERRNOS, write_error

SPEC_FIELDS = ("num_movies", "num_users", "numeric_features", "categorical_features", "multi_valued_features",
               "rating", "time", "splits")  # fmt: skip


def load_feature_spec(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / "feature_spec.json"
    if not path.is_file():
        raise DatasetError(f"{path}: not found; make the dataset folder with `python prepare_dataset.py --output DIR`.")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); re-run prepare_dataset.py for this folder.") from None
    missing = [key for key in SPEC_FIELDS if not isinstance(spec, dict) or key not in spec]
    if missing:
        raise DatasetError(f"{path}: no {missing[0]!r} field; re-run prepare_dataset.py for this folder.")
    numeric = spec["numeric_features"]  # folders prepared before features were marked by when they are known
    numeric.setdefault("post_release", [name for name in numeric.get("names", []) if name in POST_RELEASE_FEATURES])
    return spec


def load_tables(dataset_dir: str | os.PathLike):
    """The movies and sequences tables, read with `datasets.load_dataset` exactly as a user would, and checked
    against the folder's feature spec (a spec copied from another dataset stops here, not at an index error)."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetsError

    dataset_dir = str(dataset_dir)
    spec = load_feature_spec(dataset_dir)
    cache_dir = tables_cache_dir(dataset_dir)
    tables = []
    for name in ("movies", "sequences"):
        try:
            tables.append(load_dataset(dataset_dir, name, split="train", cache_dir=cache_dir))
        except OSError as error:
            if error.errno in WRITE_ERRNOS:
                raise write_error(cache_dir, error) from None
            raise _unreadable(dataset_dir, name, error) from None
        except (ValueError, pa.ArrowException, DatasetsError) as error:
            raise _unreadable(dataset_dir, name, error) from None
    movies, sequences = tables
    check_tables(spec, movies, sequences, dataset_dir=dataset_dir)
    return movies.with_format("numpy"), sequences


def _unreadable(dataset_dir: str, name: str, error: BaseException) -> DatasetError:
    cause = error.__cause__ or error.__context__ or error
    return DatasetError(
        f"{dataset_dir}/{name}: cannot read the table ({first_line(cause)[:200]}); re-run prepare_dataset.py for "
        "this folder."
    )


def check_tables(spec: dict, movies, sequences, *, dataset_dir: str | os.PathLike) -> None:
    """The tables must be the ones the feature spec describes: its movie count, and user and movie indices below
    its num_users and num_movies (the embedding tables' sizes)."""
    fix = "the feature_spec.json belongs to another dataset; re-run prepare_dataset.py for this folder."
    if len(movies) != spec["num_movies"]:
        raise DatasetError(f"{dataset_dir}: feature_spec.json says {spec['num_movies']} movies, the movies table has "
                           f"{len(movies)}; {fix}")  # fmt: skip
    table = sequences.data
    highest_user = pc.max(table.column("user_index")).as_py() if len(sequences) else 0
    movies_seen = pc.list_flatten(table.column("movie_index")) if len(sequences) else pa.array([], pa.int64())
    highest_movie = pc.max(movies_seen).as_py() if len(movies_seen) else 0
    if highest_user >= spec["num_users"]:
        raise DatasetError(f"{dataset_dir}: the sequences table has user_index {highest_user}, feature_spec.json "
                           f"allows below {spec['num_users']}; {fix}")  # fmt: skip
    if highest_movie >= spec["num_movies"]:
        raise DatasetError(f"{dataset_dir}: the sequences table has movie_index {highest_movie}, feature_spec.json "
                           f"allows below {spec['num_movies']}; {fix}")  # fmt: skip


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

    try:
        expected = FusionRecConfig.from_feature_spec(spec).feature_signature()
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{dataset_dir}/feature_spec.json: {first_line(error)}; re-run prepare_dataset.py.") from None
    actual = config.feature_signature()
    for key, value in expected.items():
        if actual[key] != value:
            raise DatasetError(
                f"{dataset_dir}: feature spec differs from the model's ({key}: dataset {value!r} vs model "
                f"{actual[key]!r}); use the dataset the model was trained on."
            )
