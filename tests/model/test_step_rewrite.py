"""The training step's faster formulas compute the same function as the straightforward ones: the Perceiver pooled by
reassociation, the token projection from half-precision chunks, collisions as (target, column) pairs, bags by
embedding_bag; and a checkpoint saved by the code before them loads and gives the same outputs and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors.torch import load_file

import modeling_fusionrec
from modeling_fusionrec import FusionModel, PerceiverResampler, ProjectTokens, window_collisions

REFERENCE = Path(__file__).resolve().parent / "reference"


def straightforward_resampler(resampler: PerceiverResampler, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The Flamingo formula as the code before issue 23 ran it: keys and values projected for every token, SDPA."""
    media = F.linear(tokens.to(resampler.project_in.weight.dtype), resampler.project_in.weight, resampler.project_in.bias)
    latents = repeat(resampler.latents, "n d -> b n d", b=tokens.shape[0])
    for attention, ff in resampler.layers:
        normed_media, normed_latents = attention.norm_media(media), attention.norm_latents(latents)
        q = attention.to_q(normed_latents)
        k, v = attention.to_kv(torch.cat((normed_media, normed_latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attention.num_heads) for t in (q, k, v))
        key_mask = torch.cat((mask, mask.new_ones(latents.shape[:2])), dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(key_mask, "b n -> b 1 1 n"))
        latents = attention.to_out(rearrange(out, "b h n d -> b n (h d)")) + latents
        latents = ff(latents) + latents
    return resampler.norm(latents)


def outputs_and_gradients(module: torch.nn.Module, run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    out = run()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in module.named_parameters()}


def test_the_reassociated_perceiver_equals_the_straightforward_formula_with_its_gradients():
    torch.manual_seed(0)
    # depth 2: the first layer's latents are shared by the batch, the second's are each movie's own
    resampler = PerceiverResampler(input_dim=16, dim=24, depth=2, head_dim=8, num_heads=3, num_latents=4).double()
    with torch.no_grad():
        for parameter in resampler.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)  # away from the initialisation's symmetries
    tokens = torch.randn(5, 7, 16, dtype=torch.float64)
    mask = torch.arange(7) < torch.tensor([7, 3, 1, 5, 0])[:, None]  # the last movie has no text at all
    out, grads = outputs_and_gradients(resampler, lambda: resampler(tokens, mask=mask))
    expected, expected_grads = outputs_and_gradients(resampler, lambda: straightforward_resampler(resampler, tokens, mask))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert set(grads) == set(expected_grads) and all(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=0, atol=1e-10, msg=name)


def test_the_chunked_token_projection_equals_a_linear_layer_over_the_converted_tokens(monkeypatch):
    monkeypatch.setattr(ProjectTokens, "CHUNK_ROWS", 5)  # 4 x 6 = 24 rows: five chunks, the last one short
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 8, generator=generator, requires_grad=True)
    bias = torch.randn(3, generator=generator, requires_grad=True)
    tokens = torch.randn(4, 6, 8, generator=generator).half()
    out = ProjectTokens.apply(tokens, weight, bias)
    out.pow(2).sum().backward()
    grads = weight.grad.clone(), bias.grad.clone()
    weight.grad = bias.grad = None
    expected = F.linear(tokens.float(), weight, bias)
    expected.pow(2).sum().backward()
    assert out.dtype == torch.float32 and out.shape == (4, 6, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(grads, (weight.grad, bias.grad), rtol=1e-6, atol=1e-5)
    # tokens that need a gradient get it too
    tokens = torch.randn(2, 6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight64, bias64 = weight.detach().double(), bias.detach().double()
    (grad_tokens,) = torch.autograd.grad(ProjectTokens.apply(tokens, weight64, bias64).sum(), tokens)
    torch.testing.assert_close(grad_tokens, weight64.sum(dim=0).expand(2, 6, 8))


@pytest.mark.parametrize("blocks", [1, 2])
def test_window_collisions_are_the_dense_mask_of_the_users_other_positives(monkeypatch, blocks):
    """The pairs equal the mask the code before built densely: every candidate column holding a movie of the target's
    window (in any process's block), except the target's own column."""
    monkeypatch.setattr(modeling_fusionrec, "process_count", lambda: blocks)
    generator = torch.Generator().manual_seed(blocks)
    movies = torch.randint(0, 12, (3, 6), generator=generator)  # repeats within a window included
    history_mask = torch.arange(6) < torch.tensor([6, 4, 2])[:, None]
    target_mask = history_mask.clone()
    target_mask[0, 0] = False
    block_movies = [torch.unique(torch.cat((movies[history_mask], torch.tensor([11, 3])))) for _ in range(blocks)]
    block_movies[-1] = block_movies[-1][1:]  # the last process drew one movie fewer: its block is padded with -1
    size = max(len(b) for b in block_movies)
    candidates = torch.cat([F.pad(b, (0, size - len(b)), value=-1) for b in block_movies])
    own = block_movies[0]  # this process is rank 0: its rows come first
    positive_rows = torch.searchsorted(own, movies[target_mask])
    rows, columns = window_collisions(movies, history_mask, target_mask=target_mask, positive_rows=positive_rows,
                                      candidate_indices=candidates, num_movies=12)  # fmt: skip
    in_window = ((movies.unsqueeze(-1) == candidates) & history_mask.unsqueeze(-1)).any(dim=1)
    dense = in_window[target_mask.nonzero()[:, 0]]
    dense[torch.arange(len(positive_rows)), positive_rows] = False
    built = torch.zeros_like(dense)
    built[rows, columns] = True
    assert torch.equal(built, dense) and dense.sum() > 0  # a movie twice in a window gives its pair twice: harmless


def unflatten(flat: dict[str, torch.Tensor]) -> dict:
    batch: dict = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = batch
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return batch


def test_a_checkpoint_saved_before_the_rewrite_gives_the_same_outputs_and_gradients():
    """tests/model/reference/ was made by the code before (make_reference.py says how): same weight names and
    shapes, so the checkpoint loads as it is, and the same function, so its outputs and gradients agree."""
    model = FusionModel.from_pretrained(REFERENCE / "model").eval()
    batch = unflatten(load_file(str(REFERENCE / "batch.safetensors")))
    expected = load_file(str(REFERENCE / "outputs.safetensors"))
    out = model(**batch)
    out.loss.backward()
    for name in ("loss", "retrieval_loss", "user_vectors", "movie_vectors", "rating_predictions"):
        torch.testing.assert_close(getattr(out, name), expected[name], rtol=1e-5, atol=1e-5, msg=name)
    gradients = {f"grad.{name}": p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert set(gradients) == {name for name in expected if name.startswith("grad.")}
    for name, grad in gradients.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)
