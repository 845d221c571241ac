"""FusionRec configuration."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)
SCORE_FUNCTIONS = ("cosine", "dot")
_WARNED_SHA256: set[str] = set()


@functools.cache
def modeling_source_sha256() -> str | None:
    """sha256 of the modeling_fusionrec.py next to this file: the code that saves or loads the weights."""
    path = Path(__file__).with_name("modeling_fusionrec.py")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def warn_if_modeling_changed(recorded: str | None) -> None:
    """Warn (once per process and recorded hash) when a checkpoint was saved by another modeling_fusionrec.py."""
    current = modeling_source_sha256()
    if recorded is None or current is None or recorded == current or recorded in _WARNED_SHA256:
        return
    _WARNED_SHA256.add(recorded)
    logger.warning(
        "this checkpoint was saved by modeling_fusionrec.py with sha256 %s, the code loading it has sha256 %s: "
        "its outputs may differ from the saved model's; load it with trust_remote_code=True to run its own code.",
        recorded[:12], current[:12],
    )


class FusionRecConfig(PretrainedConfig):
    r"""
    Configuration of [`FusionModel`], a two-tower recommender: a movie tower over content features and frozen-encoder
    text, and a user tower (causal Transformer) over the rating history. Build it from a prepared dataset with
    [`FusionRecConfig.from_feature_spec`]; every size that depends on the data comes from there.

    Args:
        num_movies (`int`): Catalog size; movie indices run from 0 to `num_movies - 1`.
        num_users (`int`): Size of the user-id table; index 0 is the "unknown user" used for typed histories.
        numeric_feature_names (`list[str]`): Numeric movie features, in the order of the `numeric` input columns.
        numeric_feature_means (`list[float]`): Mean of each numeric feature, used to z-score it inside the model.
        numeric_feature_stds (`list[float]`): Standard deviation of each numeric feature (must be > 0).
        post_release_feature_names (`list[str]`): The numeric features measured after a movie's release (votes,
            popularity, revenue): a movie new to the system has none of them.
        post_release_dropout (`float`): Probability of hiding a movie's post-release features (as missing) in
            training, so the model learns to rank movies that have none yet: the cold-start case.
        categorical_vocab_sizes (`dict[str, int]`): Single-valued categorical features and their vocabulary sizes
            (index 0 is padding, 1 out-of-vocabulary).
        multi_valued_vocab_sizes (`dict[str, int]`): Multi-valued ("bag") features and their vocabulary sizes.
        multi_valued_max_lengths (`dict[str, int]`): Longest bag kept per multi-valued feature.
        hidden_size (`int`): Width of both towers and of the final movie and user vectors.
        fusion_hidden_size (`int`): Width of the hidden layer of the fusion MLP in the movie tower.
        use_id_embedding (`bool`): Give each movie a learned id embedding (helps warm movies, useless for cold ones).
        use_content_features (`bool`): Use numeric, categorical and multi-valued movie features.
        use_text (`bool`): Use the frozen text encoder's token states, pooled by the Perceiver Resampler.
        movie_id_dropout (`float`): Probability of zeroing a movie's id embedding in training, so content learns to
            carry the vector alone: the cold-start case and the long tail, whose ids are trained on few ratings
            (0.5 rather than 0.2 lifted validation Recall@100 on movies with <= 30 ratings, head unchanged).
        count_gated_ids (`bool`): Scale each movie's id embedding by a learned gate of how often the movie was rated
            in training (`FusionModel.set_movie_counts`), so a head movie leans on its id and a rare or new one on
            its content: the better of the two per movie, not their average.
        user_id_dropout (`float`): Probability of replacing the user id with the unknown user in training.
        match_features (`list[str]`): Categorical features whose value the user's last movie shares with a candidate
            (e.g. `["collection"]`: the next film of a franchise), scored directly: both vectors get a match channel
            of `match_dim` more numbers, the movie's from its own values and the user's from its last movie's, so
            that a shared value adds a learned bonus to the dot product. A pooled user vector against a fused movie
            vector has no such term; SASRec's shared input/output embeddings do. Empty: no channel.
        match_dim (`int`): Width of each match-channel vector.
        match_init_bonus (`float`): What a shared value adds to a cosine score at initialization; training moves it.
        text_encoder_name_or_path (`str`): Frozen text encoder (any `AutoModel` text encoder; T5 by default).
        text_encoder_revision (`str`, *optional*): Revision of the text encoder, part of the text-cache key.
        text_hidden_size (`int`): Hidden size of the text encoder's token states.
        text_max_length (`int`): Tokens kept per movie text.
        perceiver_num_latents (`int`): Latent queries of the Perceiver Resampler.
        perceiver_depth (`int`): Perceiver Resampler layers.
        perceiver_num_heads (`int`): Attention heads in the Perceiver Resampler.
        perceiver_head_dim (`int`): Width of each Perceiver attention head.
        user_num_layers (`int`): Layers of the user Transformer.
        user_num_heads (`int`): Attention heads of the user Transformer (must divide `hidden_size`).
        max_history_length (`int`): Longest history window the user Transformer reads (most recent steps).
        num_rating_buckets (`int`): Rating embedding buckets: bucket = round(rating / rating_step), 0 = unknown.
        rating_step (`float`): Rating granularity (0.5 for MovieLens).
        rating_min (`float`): Smallest rating, the lower clamp of the rating head.
        rating_max (`float`): Largest rating, the upper clamp of the rating head.
        time_origin (`float`): Unix time subtracted from timestamps before scaling (the dataset's first rating).
        time_scale (`float`): Seconds per unit of the scaled time features (default ten years).
        dropout (`float`): Dropout in both towers.
        retrieval_temperature (`float`): Softmax temperature of the retrieval scores (similarity / temperature).
        score_function (`str`): "cosine": user and movie vectors are L2-normalised, so a score is their cosine; "dot":
            they are not (and the movie tower ends without its LayerNorm), so a movie's vector length can carry how
            likely it is overall, as in SASRec's dot-product scores.
        learn_temperature (`bool`): Learn the temperature (starting at `retrieval_temperature`) instead of keeping it fixed.
        logq_correction (`float`): Weight in [0, 2] of the log sampling probability subtracted from each candidate's
            logit in training (Yi et al. 2019): 1 (or true) corrects fully, so the scores estimate the full softmax
            and keep the movies' popularity; 0 (or false) not at all, so movies drawn often as negatives (the popular
            ones) are pushed down; in between, partly; above 1, rarely drawn movies are pushed down instead: a
            popularity prior beyond the full softmax's.
        rating_loss_weight (`float`): Weight of the rating-regression loss in the total loss; 0 disables the head's
            loss (the head is still built and predicts).
        initializer_range (`float`): Standard deviation of the normal initialiser for embeddings and linear layers.
        modeling_sha256 (`str`, *optional*): sha256 of the modeling_fusionrec.py that saved the checkpoint, written by
            `save_pretrained`; loading with a different file logs a warning once.
    """

    model_type = "fusionrec"
    # The task `pipeline(..., trust_remote_code=True)` finds in config.json: the class lives in the remote code.
    custom_pipelines_default = {
        "movie-recommendation": {"impl": "pipeline_fusionrec.MovieRecommendationPipeline", "pt": ["AutoModel"]}
    }

    def __init__(
        self,
        num_movies: int = 16,
        num_users: int = 8,
        numeric_feature_names: list[str] | None = None,
        numeric_feature_means: list[float] | None = None,
        numeric_feature_stds: list[float] | None = None,
        post_release_feature_names: list[str] | None = None,
        post_release_dropout: float = 0.0,
        categorical_vocab_sizes: dict[str, int] | None = None,
        multi_valued_vocab_sizes: dict[str, int] | None = None,
        multi_valued_max_lengths: dict[str, int] | None = None,
        hidden_size: int = 128,
        fusion_hidden_size: int = 256,
        use_id_embedding: bool = True,
        use_content_features: bool = True,
        use_text: bool = True,
        movie_id_dropout: float = 0.5,
        count_gated_ids: bool = True,
        user_id_dropout: float = 0.1,
        match_features: list[str] | None = None,
        match_dim: int = 16,
        match_init_bonus: float = 0.25,
        text_encoder_name_or_path: str = "google-t5/t5-small",
        text_encoder_revision: str | None = None,
        text_hidden_size: int = 512,
        text_max_length: int = 128,
        perceiver_num_latents: int = 8,
        perceiver_depth: int = 1,
        perceiver_num_heads: int = 4,
        perceiver_head_dim: int = 16,
        user_num_layers: int = 2,
        user_num_heads: int = 4,
        max_history_length: int = 100,
        num_rating_buckets: int = 11,
        rating_step: float = 0.5,
        rating_min: float = 0.5,
        rating_max: float = 5.0,
        time_origin: float = 0.0,
        time_scale: float = 315_576_000.0,
        dropout: float = 0.1,
        retrieval_temperature: float = 0.1,
        score_function: str = "cosine",
        learn_temperature: bool = False,
        logq_correction: float = 1.0,
        rating_loss_weight: float = 0.5,
        initializer_range: float = 0.02,
        modeling_sha256: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.num_movies = num_movies
        self.num_users = num_users
        self.numeric_feature_names = list(numeric_feature_names or [])
        self.numeric_feature_means = [float(v) for v in (numeric_feature_means or [0.0] * len(self.numeric_feature_names))]
        self.numeric_feature_stds = [float(v) for v in (numeric_feature_stds or [1.0] * len(self.numeric_feature_names))]
        self.post_release_feature_names = list(post_release_feature_names or [])
        self.post_release_dropout = post_release_dropout
        # Sorted: config.json is written with sorted keys, and the movie tower concatenates features in this order.
        self.categorical_vocab_sizes = dict(sorted((categorical_vocab_sizes or {}).items()))
        self.multi_valued_vocab_sizes = dict(sorted((multi_valued_vocab_sizes or {}).items()))
        self.multi_valued_max_lengths = dict(sorted((multi_valued_max_lengths or {}).items()))
        self.hidden_size = hidden_size
        self.fusion_hidden_size = fusion_hidden_size
        self.use_id_embedding = use_id_embedding
        self.use_content_features = use_content_features
        self.use_text = use_text
        self.movie_id_dropout = movie_id_dropout
        self.count_gated_ids = count_gated_ids
        self.user_id_dropout = user_id_dropout
        self.match_features = list(match_features or [])
        self.match_dim = match_dim
        self.match_init_bonus = match_init_bonus
        self.text_encoder_name_or_path = text_encoder_name_or_path
        self.text_encoder_revision = text_encoder_revision
        self.text_hidden_size = text_hidden_size
        self.text_max_length = text_max_length
        self.perceiver_num_latents = perceiver_num_latents
        self.perceiver_depth = perceiver_depth
        self.perceiver_num_heads = perceiver_num_heads
        self.perceiver_head_dim = perceiver_head_dim
        self.user_num_layers = user_num_layers
        self.user_num_heads = user_num_heads
        self.max_history_length = max_history_length
        self.num_rating_buckets = num_rating_buckets
        self.rating_step = rating_step
        self.rating_min = rating_min
        self.rating_max = rating_max
        self.time_origin = time_origin
        self.time_scale = time_scale
        self.dropout = dropout
        self.retrieval_temperature = retrieval_temperature
        self.score_function = score_function
        self.learn_temperature = learn_temperature
        self.logq_correction = float(logq_correction) if isinstance(logq_correction, bool) else logq_correction
        self.rating_loss_weight = rating_loss_weight
        self.initializer_range = initializer_range
        self.modeling_sha256 = modeling_sha256
        kwargs.setdefault("custom_pipelines", copy.deepcopy(self.custom_pipelines_default))
        super().__init__(**kwargs)
        self._check_types()
        self._check_sizes()
        warn_if_modeling_changed(modeling_sha256)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Also record which modeling_fusionrec.py the saved weights go with (`modeling_sha256`)."""
        self.modeling_sha256 = modeling_source_sha256()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def _check_types(self) -> None:
        """A config.json edited by hand fails here, naming the field, not deep inside the model."""
        kinds = {
            "an int": (int, ("num_movies", "num_users", "hidden_size", "fusion_hidden_size", "text_hidden_size",
                             "text_max_length", "perceiver_num_latents", "perceiver_depth", "perceiver_num_heads",
                             "perceiver_head_dim", "user_num_layers", "user_num_heads", "max_history_length",
                             "num_rating_buckets", "match_dim")),
            "a number": ((int, float), ("movie_id_dropout", "user_id_dropout", "rating_step", "rating_min", "rating_max",
                                        "time_origin", "time_scale", "dropout", "retrieval_temperature",
                                        "rating_loss_weight", "initializer_range", "logq_correction",
                                        "match_init_bonus")),
            "true or false": (bool, ("use_id_embedding", "use_content_features", "use_text", "learn_temperature")),
            "a string": (str, ("text_encoder_name_or_path", "score_function")),
        }  # fmt: skip
        for kind, (types, names) in kinds.items():
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, types) or (types is not bool and isinstance(value, bool)):
                    raise ValueError(f"FusionRecConfig.{name} must be {kind}, got {value!r}.")

    def _check_sizes(self) -> None:
        """Fail at construction, not at the first forward pass, on sizes no model can have."""
        positive = {
            "num_movies": self.num_movies,
            "num_users": self.num_users,
            "hidden_size": self.hidden_size,
            "fusion_hidden_size": self.fusion_hidden_size,
            "text_hidden_size": self.text_hidden_size,
            "text_max_length": self.text_max_length,
            "perceiver_num_latents": self.perceiver_num_latents,
            "perceiver_depth": self.perceiver_depth,
            "perceiver_num_heads": self.perceiver_num_heads,
            "perceiver_head_dim": self.perceiver_head_dim,
            "user_num_layers": self.user_num_layers,
            "user_num_heads": self.user_num_heads,
            "max_history_length": self.max_history_length,
            "num_rating_buckets": self.num_rating_buckets,
            "rating_step": self.rating_step,
            "time_scale": self.time_scale,
            "retrieval_temperature": self.retrieval_temperature,
            "match_dim": self.match_dim,
            "match_init_bonus": self.match_init_bonus,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"FusionRecConfig.{name} must be > 0, got {value!r}.")
        if self.hidden_size % self.user_num_heads:
            raise ValueError(
                f"FusionRecConfig.hidden_size ({self.hidden_size}) must be divisible by user_num_heads "
                f"({self.user_num_heads})."
            )
        numeric = len(self.numeric_feature_names)
        if len(self.numeric_feature_means) != numeric or len(self.numeric_feature_stds) != numeric:
            raise ValueError(
                f"FusionRecConfig.numeric_feature_means/stds need one value per numeric feature ({numeric}), got "
                f"{len(self.numeric_feature_means)} and {len(self.numeric_feature_stds)}."
            )
        if any(not std > 0 for std in self.numeric_feature_stds):
            raise ValueError(f"FusionRecConfig.numeric_feature_stds must all be > 0, got {self.numeric_feature_stds}.")
        for field_name in ("categorical_vocab_sizes", "multi_valued_vocab_sizes", "multi_valued_max_lengths"):
            for feature, size in getattr(self, field_name).items():
                if not (isinstance(size, int) and size > 0):
                    raise ValueError(f"FusionRecConfig.{field_name}[{feature!r}] must be a positive int, got {size!r}.")
        if set(self.multi_valued_vocab_sizes) != set(self.multi_valued_max_lengths):
            raise ValueError(
                "FusionRecConfig.multi_valued_vocab_sizes and multi_valued_max_lengths must name the same features, got "
                f"{sorted(self.multi_valued_vocab_sizes)} and {sorted(self.multi_valued_max_lengths)}."
            )
        unknown = sorted(set(self.post_release_feature_names) - set(self.numeric_feature_names))
        if unknown:
            raise ValueError(f"FusionRecConfig.post_release_feature_names {unknown} are not numeric features "
                             f"({self.numeric_feature_names}).")
        for name in ("movie_id_dropout", "user_id_dropout", "post_release_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FusionRecConfig.{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"FusionRecConfig.score_function must be one of {SCORE_FUNCTIONS}, got {self.score_function!r}.")
        if not 0.0 <= self.logq_correction <= 2.0:
            raise ValueError(f"FusionRecConfig.logq_correction must be in [0, 2], got {self.logq_correction!r}.")
        categorical = sorted(self.categorical_vocab_sizes) if self.use_content_features else []
        if unknown := sorted(set(self.match_features) - set(categorical)):
            raise ValueError(f"FusionRecConfig.match_features {unknown} are not categorical features of this model "
                             f"(it has {categorical}).")
        if not (self.use_id_embedding or self.use_content_features or self.use_text):
            raise ValueError("FusionRecConfig needs at least one of use_id_embedding, use_content_features, use_text.")
        if not self.rating_min < self.rating_max:
            raise ValueError(f"FusionRecConfig.rating_min ({self.rating_min}) must be below rating_max ({self.rating_max}).")

    @property
    def vector_size(self) -> int:
        """Length of the movie and user vectors: the towers' width plus the match channel's."""
        return self.hidden_size + (self.match_dim if self.match_features else 0)

    @classmethod
    def from_feature_spec(cls, feature_spec: str | os.PathLike | dict, **overrides: Any) -> FusionRecConfig:
        """Build the config of a prepared dataset from its `feature_spec.json` (a path, its folder, or the dict)."""
        if not isinstance(feature_spec, dict):
            path = os.fspath(feature_spec)
            if os.path.isdir(path):
                path = os.path.join(path, "feature_spec.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no feature_spec.json; run prepare_dataset.py to make the dataset folder.")
            with open(path, encoding="utf-8") as handle:
                feature_spec = json.load(handle)
        try:
            numeric = feature_spec["numeric_features"]
            time = feature_spec["time"]
            rating = feature_spec["rating"]
            values = {
                "num_movies": int(feature_spec["num_movies"]),
                "num_users": int(feature_spec["num_users"]),
                "numeric_feature_names": list(numeric["names"]),
                "numeric_feature_means": [float(v) for v in numeric["mean"]],
                "numeric_feature_stds": [max(float(v), 1e-6) for v in numeric["std"]],
                "post_release_feature_names": list(numeric.get("post_release", [])),
                "categorical_vocab_sizes": {
                    name: len(spec["vocab"]) for name, spec in feature_spec["categorical_features"].items()
                },
                "multi_valued_vocab_sizes": {
                    name: len(spec["vocab"]) for name, spec in feature_spec["multi_valued_features"].items()
                },
                "multi_valued_max_lengths": {
                    name: int(spec["max_length"]) for name, spec in feature_spec["multi_valued_features"].items()
                },
                "rating_min": float(rating["min"]),
                "rating_max": float(rating["max"]),
                "time_origin": float(time["min_timestamp"]),
            }
        except KeyError as error:
            raise ValueError(f"feature_spec.json lacks the field {error}; re-run prepare_dataset.py.") from error
        values.update(overrides)
        return cls(**values)

    def feature_signature(self) -> dict[str, Any]:
        """The data-dependent part of the config: two configs can share weights only if these are equal."""
        return {
            "num_movies": self.num_movies,
            "num_users": self.num_users,
            "numeric_feature_names": self.numeric_feature_names,
            "categorical_vocab_sizes": self.categorical_vocab_sizes,
            "multi_valued_vocab_sizes": self.multi_valued_vocab_sizes,
        }


__all__ = ["FusionRecConfig"]
