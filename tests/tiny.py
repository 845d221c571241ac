"""Builders for tiny models, tokenizers, batches and training runs shared by the tests, a free local port, and the
environment of a script they run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, T5Config, T5Model

from configuration_fusionrec import FusionRecConfig

CORPUS = [
    "Toy Story (1995). Genres: Animation, Comedy. A cowboy doll is threatened by a new spaceman figure.",
    "Jumanji (1995). Genres: Adventure, Fantasy. Siblings find a magical board game in an attic.",
    "Heat (1995). Genres: Crime, Drama. A detective hunts a master thief across Los Angeles.",
    "GoldenEye (1995). Genres: Action, Thriller. A spy stops a rogue agent with a satellite weapon.",
] * 4


REPO_ROOT = Path(__file__).resolve().parents[1]


def offline_env() -> dict:
    """The environment of a script run in a subprocess: offline, importing this checkout's code."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def train_tokenizer(directory: Path) -> Path:
    """A small word-piece tokenizer trained locally, saved so AutoTokenizer.from_pretrained(directory) loads it."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"])
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return directory


def save_tiny_t5(directory: Path) -> Path:
    """A 1-layer, 32-wide T5 with a locally trained tokenizer: a stand-in for google-t5/t5-small, offline."""
    train_tokenizer(directory)
    vocab_size = len(PreTrainedTokenizerFast.from_pretrained(directory))
    config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    torch.manual_seed(0)
    T5Model(config).save_pretrained(directory)
    return directory


def save_tiny_model(folder: Path, dataset: Path, **overrides) -> Path:
    """An untrained 32-wide model of a prepared dataset (no text unless asked), saved with save_pretrained."""
    from modeling_fusionrec import FusionModel

    config = FusionRecConfig.from_feature_spec(
        dataset, hidden_size=32, fusion_hidden_size=32, user_num_layers=1, user_num_heads=2, max_history_length=8,
        **{"use_text": False, **overrides},
    )  # fmt: skip
    torch.manual_seed(0)
    FusionModel(config).save_pretrained(folder)
    return folder


def tiny_config(**overrides) -> FusionRecConfig:
    values = dict(
        num_movies=40,
        num_users=10,
        numeric_feature_names=["log_budget", "year"],
        numeric_feature_means=[15.0, 1990.0],
        numeric_feature_stds=[2.0, 15.0],
        categorical_vocab_sizes={"adult": 4, "original_language": 6},
        multi_valued_vocab_sizes={"genres": 9, "keywords": 12},
        multi_valued_max_lengths={"genres": 4, "keywords": 5},
        hidden_size=32,
        fusion_hidden_size=48,
        text_hidden_size=32,
        text_max_length=32,
        perceiver_num_latents=4,
        perceiver_depth=1,
        perceiver_num_heads=2,
        perceiver_head_dim=8,
        user_num_layers=1,
        user_num_heads=2,
        max_history_length=12,
        time_origin=8.0e8,
        dropout=0.0,
    )
    values.update(overrides)
    return FusionRecConfig(**values)


def movie_inputs(config: FusionRecConfig, movie_indices: torch.Tensor, *, seed: int = 0, tokens: int = 6) -> dict:
    """Deterministic random features for the given movies (a function of the movie index and seed)."""
    generator = torch.Generator().manual_seed(seed)
    count = config.num_movies
    numeric = torch.randn(count, len(config.numeric_feature_names), generator=generator) * 3 + torch.tensor(
        config.numeric_feature_means
    )
    numeric[::7, 0] = float("nan")
    table = {
        "numeric": numeric,
        "categorical": {
            name: torch.randint(0, size, (count,), generator=generator)
            for name, size in config.categorical_vocab_sizes.items()
        },
        "multi_valued": {
            name: torch.randint(0, size, (count, config.multi_valued_max_lengths[name]), generator=generator)
            for name, size in config.multi_valued_vocab_sizes.items()
        },
        "text_states": torch.randn(count, tokens, config.text_hidden_size, generator=generator).half(),
        "text_mask": torch.arange(tokens).expand(count, tokens) < torch.randint(1, tokens + 1, (count, 1), generator=generator),
    }
    picked = {
        key: ({name: value[movie_indices] for name, value in value.items()} if isinstance(value, dict) else value[movie_indices])
        for key, value in table.items()
    }
    return {"movie_indices": movie_indices, **picked}


def history_batch(config: FusionRecConfig, *, batch: int = 4, length: int = 8, seed: int = 0) -> dict:
    """Right-padded histories of distinct movies with increasing timestamps, plus the batch's movie inputs."""
    generator = torch.Generator().manual_seed(seed)
    movies = torch.stack([torch.randperm(config.num_movies, generator=generator)[:length] for _ in range(batch)])
    lengths = torch.randint(3, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = torch.arange(length).expand(batch, length) < lengths[:, None]
    ratings = torch.randint(1, 11, (batch, length), generator=generator).float() / 2
    gaps = torch.randint(1, 10**6, (batch, length), generator=generator)
    timestamps = int(config.time_origin) + gaps.cumsum(dim=1)
    movies, ratings, timestamps = movies * mask, ratings * mask, timestamps * mask
    negatives = torch.randperm(config.num_movies, generator=generator)[:6]
    candidates = torch.unique(torch.cat([movies[mask], negatives]))
    return {
        "history_movie_indices": movies,
        "history_ratings": ratings,
        "history_timestamps": timestamps,
        "history_mask": mask,
        "user_indices": torch.randint(1, config.num_users, (batch,), generator=generator),
        "movie_inputs": movie_inputs(config, candidates, seed=seed),
    }


def reset_accelerate_state() -> None:
    """Each in-process run builds its own Accelerator; accelerate keeps process-wide singletons between them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(argv: list, **kwargs) -> int:
    """train_accelerate.py's main, in this process, with accelerate's singletons reset first."""
    from fusionrec.training import loop

    reset_accelerate_state()
    return loop.main([str(a) for a in argv], **kwargs)


def free_port() -> int:
    """A TCP port nobody listens on right now, so concurrent suites do not share a rendezvous port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TITLES = ["Heat", "The Matrix", "Toy Story", "Amélie", "千と千尋の神隠し", "Heat"]
YEARS = [1995, 1999, 1995, 2001, 2001, 1986]


def save_tiny_release(folder: Path, *, encoder: Path | None = None) -> Path:
    """A folder as a release holds it (weights, remote code, catalog) for a tiny untrained model: 40 movies, among
    them two titled "Heat" and a Japanese title; with `encoder` (a tiny T5 folder) the model reads text."""
    from modeling_fusionrec import FusionModel
    from pipeline_fusionrec import FusionCatalog

    torch.manual_seed(0)
    extra = {"text_encoder_name_or_path": str(encoder)} if encoder else {"use_text": False}
    config = tiny_config(**extra)
    model = FusionModel(config).eval()
    with torch.no_grad():
        vectors = model.calculate_movie_feature(**{
            key: value for key, value in movie_inputs(config, torch.arange(config.num_movies)).items()
            if config.use_text or not key.startswith("text_")
        })  # fmt: skip
    count = config.num_movies
    titles = TITLES + [f"Film {i}" for i in range(count - len(TITLES))]
    model.set_movie_catalog(FusionCatalog(
        titles=titles, years=YEARS + [1990 + i % 30 for i in range(count - len(YEARS))],
        genres=[["Crime", "Drama"]] + [["Drama"]] * (count - 1), movie_ids=list(range(1, count + 1)),
        tmdb_ids=list(range(1001, 1001 + count)), imdb_ids=[None] * count, vectors=vectors,
        last_rating_time=1_400_000_000,
    ))  # fmt: skip
    model.save_pretrained(folder)
    model.movie_catalog().save(folder)
    return folder
