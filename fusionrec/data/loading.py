"""Opening a prepared dataset folder (docs/DATASET_FORMAT.md): its feature spec, its two tables read with
`datasets.load_dataset` exactly as a user would, and the check that a model and a dataset share one feature spec.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fusionrec.errors import DatasetError


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
