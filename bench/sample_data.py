"""Where the benchmarks find the real Kaggle sample: beside the checkout in ../shared/data, or wherever --data-dir
points. The tests never need it (they ship a slice under tests/data/)."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "the-movies-dataset-sample"


def require_sample_dir(path: str | Path, *, option: str = "--data-dir") -> Path:
    """The sample folder, or exit with one line that says what is missing and how to point elsewhere."""
    path = Path(path)
    if not (path / "ratings_small.csv").is_file():
        sys.exit(
            f"error: the Kaggle sample (ratings_small.csv, movies_metadata.csv, ...) is not at {path}; download "
            f"'The Movies Dataset' from Kaggle and pass its folder with {option} DIR"
        )
    return path
