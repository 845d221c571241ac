"""Explained recommendations, neighbours and a new movie from text, each checked against its definition: a reason's
contribution is the score the recommendation loses when the model re-reads the typed history without that movie."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny import movie_inputs, save_tiny_t5, tiny_config

from modeling_fusionrec import FusionModel
from pipeline_fusionrec import FusionCatalog, MovieRecommendationPipeline

HISTORY = ["Heat (1995)", "The Matrix (1999)", "Toy Story (1995)", "Amélie (2001)", "Film 3 (2003)"]


def tiny_catalog(vectors: torch.Tensor) -> FusionCatalog:
    titles = ["Heat", "The Matrix", "Toy Story", "Amélie", "千と千尋の神隠し"] + [f"Film {i}" for i in range(len(vectors) - 5)]
    years = [1995, 1999, 1995, 2001, 2001] + [2000 + i % 20 for i in range(len(vectors) - 5)]
    count = len(titles)
    return FusionCatalog(
        titles=titles, years=years, genres=[["Drama"]] * count, movie_ids=list(range(1, count + 1)),
        tmdb_ids=[None] * count, imdb_ids=[None] * count, vectors=vectors, last_rating_time=1_400_000_000,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> FusionModel:
    """A tiny text model (tiny T5 encoder) carrying a catalog of the vectors it computes itself."""
    encoder = save_tiny_t5(tmp_path_factory.mktemp("t5"))
    torch.manual_seed(0)
    config = tiny_config(text_encoder_name_or_path=str(encoder))
    model = FusionModel(config).eval()
    with torch.no_grad():
        vectors = model.calculate_movie_feature(**movie_inputs(config, torch.arange(config.num_movies)))
    model.set_movie_catalog(tiny_catalog(vectors))
    return model


def score_of(model: FusionModel, history: list, movie_index: int) -> float:
    rows = model.recommend_for_history(history, k=len(model.movie_catalog()))
    return next(row["score"] for row in rows if row["movie_index"] == movie_index)


def test_each_reason_is_the_score_lost_without_that_movie_and_the_top_reason_has_the_largest_share(model):
    rows = model.recommend_for_history(HISTORY, k=6, explain=True)
    assert [row["movie_index"] for row in rows] == [row["movie_index"] for row in model.recommend_for_history(HISTORY, k=6)]
    catalog = model.movie_catalog()
    explained = 0
    for row in rows:
        lost = {
            catalog.resolve(title): row["score"] - score_of(model, [h for h in HISTORY if h != title], row["movie_index"])
            for title in HISTORY
        }
        positive = {index: value for index, value in lost.items() if value > 0}
        expected = sorted(positive, key=positive.get, reverse=True)[:3]
        reasons = row["because_you_liked"]
        assert [reason["movie_index"] for reason in reasons] == expected
        for reason in reasons:
            assert reason["share"] == pytest.approx(positive[reason["movie_index"]] / sum(positive.values()), abs=1e-4)
            assert reason["title"] == catalog.titles[reason["movie_index"]] and reason["year"] == catalog.years[reason["movie_index"]]
        if reasons:
            explained += 1
            assert reasons[0]["share"] == max(reason["share"] for reason in reasons)
    assert explained >= 3, "most recommendations of a five-movie history have a positive reason"


def test_a_one_movie_history_is_the_whole_reason_of_what_it_raised(model):
    rows = model.recommend_for_history(["Heat (1995)"], k=len(model.movie_catalog()), explain=True)
    reasons = {tuple((r["title"], r["share"]) for r in row["because_you_liked"]) for row in rows}
    assert reasons == {(("Heat", 1.0),), ()}, "a single movie explains all of a score it raised, or nothing"


def test_the_pipeline_explains_on_request_and_its_rows_are_json(model):
    recommender = MovieRecommendationPipeline(model=model, device="cpu")
    plain = recommender(HISTORY, top_k=4)
    explained = recommender(HISTORY, top_k=4, explain=True)
    assert [set(row) for row in plain] == [{"movie_id", "tmdb_id", "title", "year", "genres", "score"}] * 4
    assert [{k: v for k, v in row.items() if k != "because_you_liked"} for row in explained] == plain
    expected = model.recommend_for_history(HISTORY, k=4, explain=True)
    assert [row["because_you_liked"] for row in explained] == [row["because_you_liked"] for row in expected]
    assert json.loads(json.dumps(explained, ensure_ascii=False)) == explained


def test_similar_movies_are_the_nearest_vectors_without_the_movie_itself(model):
    vectors = model.movie_catalog().vectors
    rows = model.similar_movies("the matrix", k=5)
    scores = vectors @ vectors[1]
    scores[1] = float("-inf")
    top = scores.topk(5)
    assert [row["movie_index"] for row in rows] == top.indices.tolist()
    assert [row["score"] for row in rows] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert rows[0]["title"] and "year" in rows[0] and "predicted_rating" not in rows[0]
    assert len(model.similar_movies("千と千尋の神隠し", k=10**9)) == len(vectors) - 1
    with pytest.raises(ValueError, match="did you mean: The Matrix"):
        model.similar_movies("The Matrx")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            model.similar_movies("Heat", k=bad)


def test_a_new_movie_from_text_is_its_content_vector_with_no_id_among_the_catalog(model):
    text = "Nightfall (2024). Genres: Crime, Thriller. A detective hunts a thief across the city. Cast: A. Actor."
    vector = model.calculate_new_movie_feature([text])[0]
    assert torch.allclose(vector.norm(), torch.tensor(1.0), atol=1e-5)
    # the same vector as a catalog movie with the same text, no content features and its id row zeroed
    config, index = model.config, 7
    blank = {
        "numeric": torch.full((1, len(config.numeric_feature_names)), float("nan")),
        "categorical": {name: torch.zeros(1, dtype=torch.long) for name in config.categorical_vocab_sizes},
        "multi_valued": {name: torch.zeros(1, 1, dtype=torch.long) for name in config.multi_valued_vocab_sizes},
    }
    saved = model.movie_tower.id_embedding.weight[index].clone()
    with torch.no_grad():
        model.movie_tower.id_embedding.weight[index] = 0
        try:
            as_catalog_movie = model.calculate_movie_feature(torch.tensor([index]), **blank, texts=[text])[0]
        finally:
            model.movie_tower.id_embedding.weight[index] = saved
    assert torch.allclose(vector, as_catalog_movie, atol=1e-6)
    rows = model.similar_to_text(text, k=4)
    expected = (model.movie_catalog().vectors @ vector).topk(4)
    assert [row["movie_index"] for row in rows] == expected.indices.tolist()
    with pytest.raises(ValueError, match="non-empty movie descriptions"):
        model.similar_to_text("   ")


def test_a_model_without_text_cannot_place_a_new_movie():
    model = FusionModel(tiny_config(use_text=False)).eval()
    model.set_movie_catalog(tiny_catalog(F.normalize(torch.randn(40, 32), dim=-1)))
    with pytest.raises(ValueError, match="no text tower"):
        model.similar_to_text("A heist in Los Angeles.")
