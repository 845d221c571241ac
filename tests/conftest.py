"""Shared fixtures: the vendored real Kaggle slice, a tiny T5 encoder with a locally trained tokenizer."""

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


KAGGLE_SLICE = Path(__file__).resolve().parent / "data" / "the-movies-dataset-slice"


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """A real slice of the Kaggle "The Movies Dataset" (CC0) shipped with the tests: 59 users with all their ratings
    and their movies' metadata, keywords, credits and links rows (tests/data/the-movies-dataset-slice/PROVENANCE.md)."""
    return KAGGLE_SLICE


@pytest.fixture(scope="session")
def updated_dataset(tmp_path_factory):
    """(raw sources, the prepared old folder, the PrepareSummary of its update with the whole current files):
    new users, new movies, new ratings of old users, one changed rating, a new genre (tests/updates.py)."""
    from updates import write_update_sources

    from fusionrec.data.prepare import prepare

    root = tmp_path_factory.mktemp("update")
    sources = write_update_sources(root)
    old = root / "prepared-old"
    prepare("tmdb", old, sources.old)
    return sources, old, prepare(output=root / "prepared-new", data_dir=sources.full, update_from=old)


@pytest.fixture
def classic_upload(monkeypatch):
    """With hf_xet installed, upload_folder streams through xet endpoints instead of create_commit; force the
    single-commit path so that local_hub.LocalHub's create_commit is the network edge."""
    from huggingface_hub import hf_api

    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)
