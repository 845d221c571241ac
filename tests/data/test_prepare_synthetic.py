"""The seeded synthetic source: shape, determinism, and structure that content can learn."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from prepared_files import SEQUENCES_FILE, folder_bytes, read_movies, read_sequences

from fusionrec.data.prepare import prepare
from fusionrec.data.sources.synthetic import SYNTHETIC_GENRES


@pytest.fixture(scope="module")
def synthetic_prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    summary = prepare("synthetic", base / "a", seed=0, raw_dir=base / "raw")
    return summary, base


def test_synthetic_shape(synthetic_prepared):
    summary, base = synthetic_prepared
    out = base / "a"
    raw = base / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["movies_metadata.csv", "keywords.csv", "credits.csv", "links_small.csv", "ratings_small.csv"]
    )
    assert "[{'id':" in (raw / "movies_metadata.csv").read_text()
    assert summary.source == summary.feature_spec["source"] == "synthetic"
    assert summary.counts["users"] == 300
    assert 20_000 <= summary.counts["ratings_kept"] <= 30_000
    assert 550 <= summary.num_movies <= 600
    assert summary.counts["movies_with_metadata"] == summary.num_movies - 5  # five rated movies lack metadata
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "feature_spec.json", "movies", "sequences"]
    movies = read_movies(out)
    seqs = read_sequences(out).to_pydict()
    assert all(np.all(np.diff(ts) >= 0) for ts in seqs["timestamp"])
    assert all(t == len(m) - 1 for t, m in zip(seqs["loo_test_position"], seqs["movie_index"], strict=True))
    assert (
        sum(movies.column("cold_item").to_pylist())
        == summary.feature_spec["splits"]["cold_items"]["num_cold_items"]
    )
    spec = summary.feature_spec
    assert len(spec["multi_valued_features"]["genres"]["vocab"]) == 2 + len(SYNTHETIC_GENRES)
    assert len(spec["multi_valued_features"]["keywords"]["vocab"]) > 50
    assert "license: cc0-1.0" in (out / "README.md").read_text()


def test_synthetic_is_deterministic_per_seed(synthetic_prepared, tmp_path):
    _, base = synthetic_prepared
    prepare("synthetic", tmp_path / "same", seed=0)
    prepare("synthetic", tmp_path / "other", seed=1)
    first = folder_bytes(base / "a")
    assert folder_bytes(tmp_path / "same") == first
    assert folder_bytes(tmp_path / "other")[str(SEQUENCES_FILE)] != first[str(SEQUENCES_FILE)]


def test_synthetic_content_beats_most_popular(synthetic_prepared):
    """A crude content profile (genres + keywords of the history) must beat most-popular on leave-one-out."""
    summary, base = synthetic_prepared
    movies = read_movies(base / "a").to_pydict()
    seqs = read_sequences(base / "a").to_pydict()
    n = summary.num_movies
    spec = summary.feature_spec["multi_valued_features"]
    features = np.zeros((n, len(spec["genres"]["vocab"]) + len(spec["keywords"]["vocab"])))
    for i, (g, k) in enumerate(zip(movies["bag_genres"], movies["bag_keywords"], strict=True)):
        features[i, g] = 2.0
        features[i, np.asarray(k, dtype=int) + len(spec["genres"]["vocab"])] = 1.0
    features[:, [0, 1]] = 0.0
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-9
    popularity = np.zeros(n)
    for items, t in zip(seqs["movie_index"], seqs["loo_test_position"], strict=True):
        popularity[np.asarray(items[:t])] += 1
    hits = Counter()
    for items, t in zip(seqs["movie_index"], seqs["loo_test_position"], strict=True):
        history, target = np.asarray(items[:t]), items[t]
        for name, scores in (("pop", popularity.copy()), ("content", features @ features[history].mean(0))):
            scores[history] = -np.inf
            hits[name] += target in np.argsort(-scores, kind="stable")[:10]
    assert hits["content"] >= 2 * hits["pop"], hits
