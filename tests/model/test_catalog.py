"""A saved model's movie catalog (FusionCatalog): files, typed references, typed histories, "as of" times, and the
release API on top of it (recommend_for_history and the movie-recommendation pipeline, in process)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_config

from modeling_fusionrec import FusionModel
from pipeline_fusionrec import (
    CATALOG_FILE,
    CATALOG_VECTORS_FILE,
    FusionCatalog,
    MovieRecommendationPipeline,
    as_of_seconds,
)

TITLES = ["Heat", "Heat", "The Matrix", "Toy Story", "Amélie", "1984", "Matrix Reloaded, The"] + [
    f"Film {i}" for i in range(33)
]
YEARS = [1995, 1986, 1999, 1995, 2001, 1984, 2003] + [2000 + i % 20 for i in range(33)]


def catalog(vectors: torch.Tensor | None = None) -> FusionCatalog:
    count = len(TITLES)
    return FusionCatalog(
        titles=TITLES,
        years=YEARS,
        genres=[["Crime"], ["Crime"], ["Action", "Science Fiction"]] + [[] for _ in range(count - 3)],
        movie_ids=[6, 7, 2571, 1, None] + list(range(100, 100 + count - 5)),
        tmdb_ids=[949, 950, 603, 862, 194] + [None] * (count - 5),
        imdb_ids=["tt0113277", None, "tt0133093", "tt0114709", None] + [None] * (count - 5),
        vectors=vectors,
        last_rating_time=1_400_000_000,
    )


@pytest.fixture(scope="module")
def model() -> FusionModel:
    """A tiny model carrying a catalog whose vectors it computed itself (random but fixed features)."""
    from tiny import movie_inputs

    torch.manual_seed(0)
    config = tiny_config()
    model = FusionModel(config).eval()
    with torch.no_grad():
        vectors = model.calculate_movie_feature(**movie_inputs(config, torch.arange(config.num_movies)))
    model.set_movie_catalog(catalog(vectors))
    return model


def test_the_catalog_files_round_trip_through_json_and_safetensors(tmp_path):
    saved = catalog(F.normalize(torch.randn(len(TITLES), 8), dim=-1))
    saved.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CATALOG_FILE, CATALOG_VECTORS_FILE]
    document = json.loads((tmp_path / CATALOG_FILE).read_text(encoding="utf-8"))
    assert document["movies"]["movie_index"] == list(range(len(TITLES)))
    assert document["movies"]["title"][4] == "Amélie" and document["movies"]["tmdb_id"][5] is None
    loaded = FusionCatalog.load(tmp_path)
    assert torch.equal(loaded.vectors, saved.vectors)
    for field in ("titles", "years", "genres", "movie_ids", "tmdb_ids", "imdb_ids", "last_rating_time"):
        assert getattr(loaded, field) == getattr(saved, field), field
    (tmp_path / CATALOG_VECTORS_FILE).unlink()
    with pytest.raises(ValueError, match="has no catalog_vectors.safetensors: it was saved without its movie catalog"):
        FusionCatalog.load(tmp_path)


@pytest.mark.parametrize(
    ("reference", "index"),
    [
        ("heat (1995)", 0),
        ("HEAT (1986)", 1),
        ("the matrix", 2),
        ("Matrix, The", 2),
        ("The Matrix Reloaded", 6),
        ("amelie", 4),
        ("1984", 5),
        ("#3", 3),
        ("movie:2571", 2),
        ("ml:1", 3),
        ("movie_id:7", 1),
        ("tmdb:862", 3),
        ("imdb:tt0133093", 2),
        ("TT0114709", 3),
    ],
)
def test_typed_references_resolve_like_recommend_py(reference, index):
    assert catalog().resolve(reference) == index


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("Heat", r"'Heat' names 2 movies: Heat \(1995\) \[#0\]; Heat \(1986\) \[#1\]; add the year"),
        ("The Matrx", r"unknown movie 'The Matrx'; did you mean: The Matrix \(1999\)"),
        ("Qwzxv", r"unknown movie 'Qwzxv'; no similar title either"),
        ("tmdb:1", r"'tmdb:1': no movie with that tmdb id in this catalog"),
        ("#999", r"'#999': no movie_index 999; indices run from 0 to 39"),
    ],
)
def test_a_bad_reference_is_one_line_naming_what_to_do(reference, message):
    with pytest.raises(ValueError, match=message) as error:
        catalog().resolve(reference)
    assert "\n" not in str(error.value)


def test_a_typed_history_keeps_order_and_the_later_rating_and_ends_at_as_of():
    movies, ratings, times = catalog().typed_history(
        [("Heat (1995)", 4.0), "tmdb:862", ("the matrix", 2.5), ("heat (1995)", 3.0)],
        at=1_000, rating_min=0.5, rating_max=5.0,
    )
    assert movies == [3, 2, 0] and ratings == [5.0, 2.5, 3.0] and times == [998, 999, 1_000]
    assert catalog().typed_history("#7", at=10, rating_min=0.5, rating_max=5.0) == ([7], [5.0], [10])
    with pytest.raises(ValueError, match=r"Heat \(1995\)=9: ratings run from 0.5 to 5"):
        catalog().typed_history([("Heat (1995)", 9)], at=10, rating_min=0.5, rating_max=5.0)
    for bad in ([], [["Heat (1995)", "x"]], [3], None):
        with pytest.raises(ValueError, match="a history is a list of titles or ids"):
            catalog().typed_history(bad, at=10, rating_min=0.5, rating_max=5.0)


def test_as_of_is_the_end_of_the_named_day_in_utc():
    assert as_of_seconds("2015-06-01") == 1_433_203_199  # 2015-06-01T23:59:59Z
    assert as_of_seconds("2015-06-01T12:00:00") == 1_433_160_000
    assert as_of_seconds("2015-06-01T12:00:00+02:00") == 1_433_152_800
    assert as_of_seconds(1_433_203_199) == 1_433_203_199
    for bad in ("06/01/2015", "2015-13-01", [2015]):
        with pytest.raises(ValueError, match="is not a date"):
            as_of_seconds(bad)


def test_recommend_for_history_scores_the_catalog_as_calculate_user_feature_does(model):
    history = [("Heat (1995)", 4.5), "tmdb:862", ("#9", 2.0)]
    rows = model.recommend_for_history(history, k=6, as_of="2015-06-01")
    at = as_of_seconds("2015-06-01")
    with torch.no_grad():
        user = model.calculate_user_feature(
            history_movie_indices=torch.tensor([[0, 3, 9]]), history_ratings=torch.tensor([[4.5, 5.0, 2.0]]),
            history_timestamps=torch.tensor([[at - 2, at - 1, at]]), history_mask=torch.ones(1, 3, dtype=torch.bool),
            movie_vectors=model.movie_catalog().vectors, as_of=at,
        )[0]
    scores = model.movie_catalog().vectors @ user
    scores[[0, 3, 9]] = float("-inf")
    expected = scores.topk(6)
    assert [row["movie_index"] for row in rows] == expected.indices.tolist()
    assert [row["score"] for row in rows] == pytest.approx(expected.values.tolist(), abs=1e-6)
    assert rows[0]["title"] == TITLES[rows[0]["movie_index"]] and set(rows[0]) == {
        "movie_index", "movie_id", "tmdb_id", "imdb_id", "title", "year", "genres", "score", "predicted_rating"
    }
    assert all(0.5 <= row["predicted_rating"] <= 5.0 for row in rows)


def test_a_history_longer_than_the_window_keeps_its_recent_steps_and_excludes_every_movie(model):
    history = [f"#{i}" for i in range(model.config.max_history_length + 6)]
    inputs = model.history_inputs(history)
    assert inputs["history_movie_indices"].tolist() == [list(range(6, model.config.max_history_length + 6))]
    assert int(inputs["as_of"][0]) == 1_400_000_000 == int(inputs["history_timestamps"][0, -1])
    picked = {row["movie_index"] for row in model.recommend_for_history(history, k=40)}
    assert picked == set(range(model.config.max_history_length + 6, 40)), "only unseen movies, fewer than k"


def test_the_pipeline_takes_one_history_pairs_or_a_batch(model):
    recommender = MovieRecommendationPipeline(model=model, device="cpu")
    one = recommender(["Heat (1995)", "The Matrix"], top_k=4)
    assert [set(row) for row in one] == [{"movie_id", "tmdb_id", "title", "year", "genres", "score"}] * 4
    expected = model.recommend_for_history(["Heat (1995)", "The Matrix"], k=4)
    assert [row["title"] for row in one] == [row["title"] for row in expected]
    assert recommender(("Heat (1995)", 5.0), top_k=3) == recommender([("Heat (1995)", 5.0)], top_k=3)
    assert recommender("tmdb:862", top_k=3) == recommender(["tmdb:862"], top_k=3)
    batch = recommender([["Heat (1995)", "The Matrix"], [("tmdb:862", 4.0)], "#5"], top_k=4)
    assert batch == [one, recommender([("tmdb:862", 4.0)], top_k=4), recommender(["#5"], top_k=4)]
    with pytest.raises(ValueError, match="did you mean: The Matrix"):
        recommender(["The Matrx"])
    with pytest.raises(ValueError, match="give one history"):
        recommender([["Heat (1995)"], 3])


def test_save_pretrained_names_the_pipeline_in_config_json(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "movie-recommendation": {"impl": "pipeline_fusionrec.MovieRecommendationPipeline", "pt": ["AutoModel"]}
    }
    with pytest.raises(ValueError, match="has no catalog.json"):
        FusionModel.from_pretrained(tmp_path).movie_catalog()
