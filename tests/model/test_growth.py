"""fusionrec/growth.py: a model trained before `prepare_dataset.py --update` grows to the updated folder: stored rows
bit-identical, new rows as the model's never-seen ids, config sizes updated; an unrelated folder still stops."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from configuration_fusionrec import FusionRecConfig
from fusionrec.data.loading import load_feature_spec
from fusionrec.errors import DatasetError
from fusionrec.growth import grow_model
from modeling_fusionrec import FusionModel


def old_model(folder, **overrides) -> FusionModel:
    config = FusionRecConfig.from_feature_spec(
        folder, hidden_size=16, fusion_hidden_size=16, use_text=False, user_num_layers=1, user_num_heads=2,
        max_history_length=8, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = FusionModel(config)
    with torch.no_grad():  # trained-looking rows: every stored row differs from the never-seen ones
        for name, parameter in model.named_parameters():
            if "embedding" in name:
                parameter.add_(torch.randn_like(parameter))
    return model


def tables(model: FusionModel) -> dict[str, torch.Tensor]:
    tower = model.movie_tower
    found = {"movie_ids": tower.id_embedding.weight, "users": model.user_tower.user_embedding.weight}
    found.update({f"cat_{n}": t.weight for n, t in tower.categorical_embeddings.items()})
    found.update({f"bag_{n}": t.weight for n, t in tower.bag_embeddings.items()})
    found.update({f"match_{n}": t.weight for n, t in getattr(tower, "match_embeddings", {}).items()})
    return {name: weight.detach().clone() for name, weight in found.items()}


def test_growing_keeps_stored_rows_bit_identical_and_starts_new_ones_as_never_seen(updated_dataset):
    _, old, new = updated_dataset
    spec = load_feature_spec(new.output_dir)
    model = old_model(old, match_features=["collection"])
    counts = torch.arange(model.config.num_movies, dtype=torch.float32) + 1
    model.set_movie_counts(counts)
    before, untouched = tables(model), {n: p.detach().clone() for n, p in model.named_parameters() if "embedding" not in n}
    old_sizes = model.config.feature_signature()
    grow_model(model, spec, dataset_dir=new.output_dir, seed=3)
    after = tables(model)
    assert model.config.feature_signature() == FusionRecConfig.from_feature_spec(spec).feature_signature()
    assert model.config.num_movies > old_sizes["num_movies"] and model.config.num_users > old_sizes["num_users"]
    assert after["bag_genres"].shape[0] == old_sizes["multi_valued_vocab_sizes"]["genres"] + 1
    for name, weight in before.items():
        assert torch.equal(after[name][: len(weight)], weight), name
    grown = after["movie_ids"][len(before["movie_ids"]) :]
    assert 0.5 * model.config.initializer_range < grown.std() < 2 * model.config.initializer_range
    assert before["movie_ids"].std() > 10 * grown.std()
    assert torch.equal(after["users"][len(before["users"]) :], before["users"][0].expand_as(after["users"][len(before["users"]) :]))
    assert after["match_collection"].shape[0] == old_sizes["categorical_vocab_sizes"]["collection"] + 1
    assert torch.equal(after["cat_collection"][-1], before["cat_collection"][1])
    new_saga = after["match_collection"][-1]  # its own direction: new values must not all match each other
    assert not torch.allclose(F.normalize(new_saga, dim=0), F.normalize(before["match_collection"][1], dim=0))
    new_genre = after["bag_genres"][-1]
    assert torch.equal(new_genre, before["bag_genres"][1])  # the <oov> row: what the token was encoded as before
    assert all(torch.equal(p, untouched[n]) for n, p in model.named_parameters() if n in untouched)
    grown_counts = model.movie_tower.movie_counts  # old movies keep their training counts, new ones have none yet
    assert torch.equal(grown_counts[: len(counts)], counts) and not grown_counts[len(counts) :].any()
    assert len(grown_counts) == model.config.num_movies
    assert type(model.movie_tower.id_embedding).__name__ == "MovieIdEmbedding"
    assert model.movie_tower.id_embedding.weight.requires_grad
    # seeded: the same seed grows the same rows
    again = grow_model(old_model(old, match_features=["collection"]), spec, dataset_dir=new.output_dir, seed=3)
    assert torch.equal(again.movie_tower.id_embedding.weight, model.movie_tower.id_embedding.weight)


def test_the_grown_model_saves_and_reloads_at_its_new_size(updated_dataset, tmp_path):
    _, old, new = updated_dataset
    model = grow_model(old_model(old), load_feature_spec(new.output_dir), dataset_dir=new.output_dir)
    model.save_pretrained(tmp_path / "grown")
    saved = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert saved["num_movies"] == new.num_movies and saved["num_users"] == new.num_users
    reloaded = FusionModel.from_pretrained(tmp_path / "grown")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True))


def test_a_model_of_another_dataset_is_not_grown(updated_dataset, tmp_path):
    _, old, new = updated_dataset
    spec = load_feature_spec(new.output_dir)
    stranger = old_model(old)
    stranger.config.num_movies -= 1  # sizes no version of this folder ever had
    with pytest.raises(DatasetError, match="feature spec differs"):
        grow_model(stranger, spec, dataset_dir=new.output_dir)
    newer = old_model(new.output_dir)  # a model of the new folder never shrinks to the old one
    with pytest.raises(DatasetError, match="feature spec differs"):
        grow_model(newer, load_feature_spec(old), dataset_dir=old)
    same = old_model(new.output_dir)
    assert grow_model(same, spec, dataset_dir=new.output_dir) is same
