"""The CUDA paths (skipped without a CUDA device; `bench/gpu_check.sh` runs them with `pytest -m cuda`): vectors on
the GPU equal the CPU's, a bf16-autocast training step learns, the frozen text encoder and exact search run there,
and a grown model stays on its device."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny import history_batch, movie_inputs, save_tiny_t5, tiny_config

from fusionrec.retrieval import ExactSearch, to_device
from modeling_fusionrec import FusionModel

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def quiet_config(**overrides):
    return tiny_config(dropout=0.0, movie_id_dropout=0.0, user_id_dropout=0.0, **overrides)


def history_of(batch: dict) -> dict:
    return {k: batch[k] for k in ("history_movie_indices", "history_ratings", "history_timestamps", "history_mask")}


@torch.no_grad()
def vectors(model: FusionModel, config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    catalog = to_device(movie_inputs(config, torch.arange(config.num_movies)), device)
    batch = to_device(history_batch(config, seed=3), device)
    movies = model.to(device).calculate_movie_feature(**catalog)
    users = model.calculate_user_feature(**history_of(batch), movie_vectors=movies, user_indices=batch["user_indices"])
    return movies.cpu(), users.cpu()


def test_movie_and_user_vectors_on_cuda_equal_the_cpu_ones():
    config = quiet_config()
    torch.manual_seed(0)
    model = FusionModel(config).eval()
    cpu_movies, cpu_users = vectors(model, config, torch.device("cpu"))
    cuda_movies, cuda_users = vectors(model, config, CUDA)
    torch.testing.assert_close(cuda_movies, cpu_movies, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cuda_users, cpu_users, rtol=1e-4, atol=1e-4)


def test_a_bf16_autocast_training_step_on_cuda_matches_fp32_on_cpu_and_learns():
    config = quiet_config()
    torch.manual_seed(0)
    model = FusionModel(config).train()
    batch = history_batch(config, seed=1)
    reference = float(copy.deepcopy(model)(**batch).loss)
    model.to(CUDA)
    batch = to_device(batch, CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(reference, rel=5e-2)  # bf16 keeps ~3 significant digits
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_frozen_text_encoder_runs_on_cuda_like_on_cpu(tmp_path):
    encoder = save_tiny_t5(tmp_path / "t5")
    config = quiet_config(text_encoder_name_or_path=str(encoder))
    model = FusionModel(config).eval()
    texts = ["a spy thriller", "a cowboy doll comedy", "siblings find a magical game"]
    base = {k: v for k, v in movie_inputs(config, torch.arange(3)).items() if not k.startswith("text_")}
    with torch.no_grad():
        on_cpu = model.calculate_movie_feature(**base, texts=texts)
        model._text_encoder = None  # reload the encoder onto the model's new device
        model.to(CUDA)
        on_cuda = model.calculate_movie_feature(**to_device(base, CUDA), texts=texts)
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-3, atol=1e-3)


def test_exact_search_on_cuda_returns_the_cpu_ranking():
    generator = torch.Generator().manual_seed(0)
    movies = torch.nn.functional.normalize(torch.randn(500, 16, generator=generator), dim=-1)
    users = torch.nn.functional.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    exclude = [np.arange(i, 40 * (i + 1), 7) for i in range(8)]
    cpu = ExactSearch(movies).search(users, exclude, 20)
    cuda = ExactSearch(movies.to(CUDA)).search(users.to(CUDA), exclude, 20)
    np.testing.assert_array_equal(cuda[0], cpu[0])
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=1e-5, atol=1e-5)
