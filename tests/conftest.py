"""Shared fixtures: the real Kaggle sample, a tiny T5 encoder with a locally trained tokenizer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _sample_dir() -> Path:
    override = os.environ.get("FUSIONREC_SAMPLE_DIR")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "data" / "the-movies-dataset-sample"


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    path = _sample_dir()
    if not (path / "ratings_small.csv").exists():
        pytest.fail(f"Kaggle sample not found at {path}; set FUSIONREC_SAMPLE_DIR to the sample folder.")
    return path
