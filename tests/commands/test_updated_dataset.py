"""The commands with a model trained before `prepare_dataset.py --update` and the updated folder: the model grows to
it in memory, so new movies are ranked from their content (and text, through the text cache) before any retraining,
and new users get recommendations."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from tiny import save_tiny_t5

from configuration_fusionrec import FusionRecConfig
from fusionrec import evaluation, export, recommend
from fusionrec.cli import open_session
from modeling_fusionrec import FusionModel


@pytest.fixture(scope="module")
def old_model(updated_dataset, tmp_path_factory):
    """A tiny text model saved for the folder before the update."""
    _, old, _ = updated_dataset
    root = tmp_path_factory.mktemp("old-model")
    encoder = save_tiny_t5(root / "t5")
    config = FusionRecConfig.from_feature_spec(
        old, hidden_size=32, fusion_hidden_size=32, use_text=True, text_encoder_name_or_path=str(encoder),
        text_hidden_size=32, text_max_length=32, perceiver_num_latents=4, perceiver_depth=1, perceiver_num_heads=2,
        perceiver_head_dim=8, user_num_layers=1, user_num_heads=2, max_history_length=8,
    )  # fmt: skip
    torch.manual_seed(0)
    FusionModel(config).save_pretrained(root / "model")
    return root / "model", root / "cache"


def test_a_model_trained_before_the_update_ranks_todays_movies_at_once(updated_dataset, old_model):
    sources, old, new = updated_dataset
    model_dir, cache = old_model
    session = open_session(model_dir, new.output_dir, cache_dir=cache)
    assert session.model.config.num_movies == new.num_movies == len(session.catalog)
    vectors = session.movie_vectors()
    assert torch.isfinite(vectors).all()
    added = [int(i) for i in session.movies.index[session.movies["movie_id"].isin(sources.new_movie_ids)]]
    assert len(added) == len(sources.new_movie_ids) and min(added) >= len(open_session(model_dir, old).catalog)
    # the new movies' text went through the frozen encoder (the cache holds every catalog text)
    assert (session.catalog.text_lengths[added] > 0).all()
    new_user = sources.new_user_ids[-1]
    result = recommend.recommend(session, user_id=new_user, k=len(session.catalog))
    ranked = {row["movie_index"] for row in result["recommendations"]}
    assert set(added) - {row["movie_index"] for row in result["history"]} <= ranked
    tmdb = int(session.movies.loc[added[0], "tmdb_id"])
    typed = recommend.recommend(session, history=f"tmdb:{tmdb}=5", k=5)
    assert typed["history"][0]["movie_index"] == added[0] and len(typed["recommendations"]) == 5


def test_evaluation_and_export_run_on_the_updated_folder_with_the_old_model(updated_dataset, old_model, tmp_path):
    _, _, new = updated_dataset
    model_dir, cache = old_model
    output = tmp_path / "results.json"
    with contextlib.redirect_stdout(io.StringIO()):
        code = evaluation.main(["--model", str(model_dir), "--dataset", str(new.output_dir), "--split", "all",
                                "--cache-dir", str(cache), "--output", str(output), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads(output.read_text())
    assert report["num_movies"] == new.num_movies
    assert report["splits"]["leave_one_out"]["num_examples"] == new.num_users - 1
    with contextlib.redirect_stdout(io.StringIO()):
        code = export.main(["--model", str(model_dir), "--dataset", str(new.output_dir), "--output", str(tmp_path / "out"),
                            "--cache-dir", str(cache), "--no-progress"])  # fmt: skip
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_movies"] == new.num_movies and manifest["num_users"] == new.num_users - 1
