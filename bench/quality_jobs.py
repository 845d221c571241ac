"""The quality benchmark's jobs: one per (model, split, seed), each leaving its own JSON record file under
WORKDIR/records/ (written atomically, so a file that is there is finished: a rerun with the same --workdir keeps it).

* Baselines (most_popular, most_voted_tmdb, ease) run in the parent process: seconds each.
* FusionModel variants run as child processes of bench_quality.py (`--run-job MODEL:SPLIT:SEED`), which train,
  score test and write their records themselves.
* Peers (RecTools, bench/peers/) run as child processes in their own virtualenv; the parent turns each peer's JSON
  into a record: ranks made 0-based, metrics computed with our metric code, and a check that the peer ranked exactly
  our test targets.

A record: model, split, seed, metrics (k = 10, 20 from the top lists; recall/ndcg@100 from the ranks),
test_target_ranks (0-based, -1 beyond RANK_DEPTH), validation (at the chosen checkpoint), validation_curve
[[training CPU-seconds, validation NDCG@10], ...], train_cpu_seconds, train_wall_seconds, hyperparameters, job (the
settings the record depends on: a record made with other settings is re-run), machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from fusionrec.data.catalog import MovieCatalog  # noqa: E402
from fusionrec.data.collator import movie_frequency  # noqa: E402
from fusionrec.data.loading import load_feature_spec, load_tables  # noqa: E402
from fusionrec.data.sequences import (  # noqa: E402
    EvaluationExamples,
    SequenceRows,
    Sequences,
    UserSequence,
    evaluation_examples,
    read_sequences,
    training_part,
)
from fusionrec.data.text_cache import build_text_cache, text_cache_dir, text_hash  # noqa: E402
from fusionrec.evaluation import compute_metrics, rank_examples  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from fusionrec.metrics.fusionrec_metrics import pad_ranked_lists  # noqa: E402
from fusionrec.retrieval import catalog_vectors  # noqa: E402

SNAPSHOT_ENV = "FUSIONREC_BENCH_SNAPSHOT"
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SPLITS = ("leave_one_out", "cold_items")
K_VALUES = (10, 20)  # metrics from each model's top lists
RANK_DEPTH = 100  # every test target's rank is stored to here (-1 beyond): Recall/NDCG@100, head/tail
BASELINES = ("most_popular", "most_voted_tmdb", "ease", "content_knn")
CONTENT_KNN_GRID = {  # chosen per split on validation NDCG@10
    "genre_weight": (0.0, 0.5, 1.0, 2.0),  # genres' share of a movie's content vector beside its text vector
    "weighting": ("rating", "centered"),  # a history movie's weight: its rating, or its rating minus the user's mean
}
FUSION_VARIANTS = {  # the ablations' arguments; the rest is train_accelerate.py's defaults
    # ids only: movie-id dropout 0.2, its best on validation NDCG@10 among 0 / 0.2 / 0.5 (seed 0: 0.067 / 0.073 /
    # 0.055); the default 0.5 is for a tower that also has content to carry a hidden id (bench/README.md)
    "fusion_ids": ["--no-text", "--no-content-features", "--movie-id-dropout", "0.2"],
    "fusion_content": ["--no-id-embedding"],
    "fusion_full": [],
}
TARGET_TIME = "fusion_full@target_time"  # each fusion_full checkpoint scored as of the target's time (labelled extra)
# Per split, chosen on validation (seed 0, bench/README.md "Issue 22"): cold_items trains with the post-release
# features hidden for half the movies per step (validation NDCG@10 with no post-release features 0.0695 against 0.0330
# at 0); leave_one_out keeps the default 0 (its validation NDCG@10: 0.0672 at 0.5 against 0.0736 at 0).
SPLIT_OPTIONS = {"cold_items": ["--post-release-dropout", "0.5"]}
CONTENT_FREE = ("most_popular", "ease", "fusion_ids")  # T3; the peers are content-free too but not run on cold_items
PEER_SPLITS = ("leave_one_out",)  # RecTools scores only movies seen in training: chance on cold_items by construction
PEER_SCRIPT = BENCH / "peers" / "rectools_peer.py"
DEFAULT_PEER_PYTHON = BENCH / "peers" / ".venv-rectools" / "bin" / "python"

# Every peer's settings, in one place. The choice (n_factors 64 or 256, session_max_len 100 or 200) is made on
# validation NDCG@10; every setting tried is in bench/peers/README.md ("Settings sweep"); RecTools' MovieLens recipe
# otherwise (softmax loss, 2 blocks, 4 heads, lr 1e-3, batch 128, dropout 0.2: rectools_peer.py's defaults).
# --peer-patience and --peer-max-epochs override the last two columns (--quick: 2 epochs).
PEER_SETTINGS = {
    "rectools_sasrec": {"model": "sasrec", "item_features": "none", "n_factors": 256, "session_max_len": 200,
                        "patience": 20, "max_epochs": 200},
    "rectools_bert4rec": {"model": "bert4rec", "item_features": "none", "n_factors": 256, "session_max_len": 200,
                          "patience": 20, "max_epochs": 200},
    "rectools_sasrec_cat": {"model": "sasrec", "item_features": "cat", "n_factors": 64, "session_max_len": 200,
                            "patience": 20, "max_epochs": 200},
}
PEER_FIT = "every training event: histories longer than session_max_len + 1 as consecutive pseudo-user chunks"
MODELS = (*BASELINES, *FUSION_VARIANTS, *PEER_SETTINGS)  # what --models offers (TARGET_TIME comes with fusion_full)


def say(message: str) -> None:
    print(message, flush=True)


class PeerMismatch(Exception):
    """A peer's output does not line up with ours (other test targets, or ranks that contradict its top lists)."""


# ----- per-example metrics from 0-based target ranks (-1: beyond the stored depth) -----


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> list[int]:
    """0-based position of each example's target in its ranked list, -1 when it is not there: enough to recompute
    every hit metric per example (paired intervals between models, head/tail slices)."""
    hits = np.asarray(ranked) == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1).tolist()


def recall_per_example(ranks, k: int) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.int64)
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def ndcg_per_example(ranks, k: int = 10) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2), 0.0)


def rank_metrics(ranks, k_values=(RANK_DEPTH,)) -> dict[str, float]:
    """Recall@K and NDCG@K from target ranks, for K beyond the top lists a model's metrics come from (20)."""
    return {name: float(fn(ranks, k).mean()) if len(ranks) else 0.0
            for k in k_values for name, fn in ((f"recall@{k}", recall_per_example), (f"ndcg@{k}", ndcg_per_example))}


def list_metrics(ranked: np.ndarray, examples: EvaluationExamples, *, num_movies: int) -> dict[str, float]:
    """PROTOCOL metrics at K_VALUES of ranked lists from a model without a rating head (no rmse)."""
    metrics = compute_metrics(ranked, np.zeros(len(examples), np.float32), examples, num_movies=num_movies,
                              k_values=K_VALUES)
    metrics.pop("rmse", None)
    return metrics


def with_depth_metrics(metrics: dict, ranks: list[int]) -> dict:
    """`metrics` plus Recall/NDCG@RANK_DEPTH from the target ranks, and the number of examples."""
    return {**metrics, **rank_metrics(ranks), "num_examples": len(ranks)}


# ----- records -----


def record_path(workdir: Path, model: str, split: str, seed: int) -> Path:
    return workdir / "records" / f"{model}-{split}-seed{seed}.json"


def write_record(workdir: Path, record: dict) -> None:
    path = record_path(workdir, record["model"], record["split"], record["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record) + "\n")


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class Job:
    """One (model, split, seed). `config` is what its records depend on; `outputs` the models it writes records for
    (fusion_full: also TARGET_TIME). A child job has a `command`; `finish` turns a peer's output into records."""

    model: str
    split: str
    seed: int
    config: dict
    outputs: tuple[str, ...]
    command: list[str] | None = None
    finish: Callable[[], list[dict]] | None = None
    log: Path | None = None
    records: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.model} {self.split} seed {self.seed}"


# Settings that by construction leave a run's numbers as they are: where the remote code keeps the pipeline, and how
# many DataLoader workers gather the (identical) batches. A record made before one of them changed is still finished.
RESULT_NEUTRAL = {"config": ("custom_pipelines",), "train_accelerate": ("dataloader_num_workers",)}
# train_accelerate.py options that act only under another option's value (and records made before they existed lack)
INERT_UNLESS = {"lr_decay_patience": ("lr_scheduler", ("plateau", "wsd")), "lr_decay_factor": ("lr_scheduler", ("plateau",)),
                "lr_cooldown_fraction": ("lr_scheduler", ("wsd",)), "compile_backend": ("compile", (True,)),
                **{name: ("no_content_features", (False,))  # an ids-only model has no match channel by default
                   for name in ("match_features", "match_init_bonus", "match_bonus_factors")}}
# train_accelerate.py options and config fields added after records were made, at the value that does what the code
# did before them (an option at None: the config's default, compared on its own)
ADDED_SINCE = {
    "train_accelerate": {"compile": False, "logq_correction": None, "window_stride": None, "score_function": None,
                         "weight_average_decay": 0.0, "full_determinism": False, "embedding_lr_scale": 1.0,
                         "table_updates": "dense", "match_features": None, "match_init_bonus": None,
                         "match_bonus_factors": [1.0]},
    "config": {"score_function": "cosine", "match_features": [], "match_dim": 16, "match_init_bonus": 0.25},
}


def given_options(argv: list[str]) -> dict:
    """The train_accelerate.py options an argv sets (and only those), JSON-normalised as a record stores defaults."""
    from fusionrec.training.options import build_parser

    parser = build_parser()
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = parser.parse_known_args([str(part) for part in argv])
    return json.loads(json.dumps(vars(given), sort_keys=True, default=str))


def result_settings(job: dict | None) -> dict | None:
    """What a job's run does, for comparing a record with the job that would make it: train_accelerate.py's options
    as they take effect (its argv over its defaults, so an option given at the value a later default took is the
    same run), without the RESULT_NEUTRAL defaults, the INERT_UNLESS options that do not act in it and the
    ADDED_SINCE options at their old behaviour."""
    if not job or "defaults" not in job:
        return job
    defaults = {part: {k: v for k, v in values.items() if k not in RESULT_NEUTRAL.get(part, ())}
                for part, values in job["defaults"].items()}
    options = {**defaults.get("train_accelerate", {}), **given_options(job.get("train_accelerate_argv", []))}
    for name in RESULT_NEUTRAL["train_accelerate"]:
        options.pop(name, None)
    for name, (other, values) in INERT_UNLESS.items():
        if options.get(other) not in values:
            options.pop(name, None)
    if (options.get("window_stride") or math.inf) >= options.get("max_history_length", math.inf):
        options["window_stride"] = None  # every step of a window a target, as before the option (None)
    defaults["train_accelerate"] = options
    for part, added in ADDED_SINCE.items():
        values = defaults.get(part, {})
        for name, before in added.items():
            if values.get(name, before) == before:
                values.pop(name, None)
    return {**{key: value for key, value in job.items() if key != "train_accelerate_argv"}, "defaults": defaults}


def finished_records(workdir: Path, models: tuple[str, ...], split: str, seed: int, *, config: dict, num_test: int,
                     reused: dict | None = None) -> list[dict] | None:
    """One job's records if each is finished, made with the job's settings and ranking every test example: from
    WORKDIR/records/, else from `reused` ((model, split, seed) -> record of an earlier quality.json; copied into
    WORKDIR/records/). None: the job has to run."""

    def usable(record: dict | None) -> bool:
        return (record is not None and result_settings(record.get("job")) == result_settings(config)
                and len(record.get("test_target_ranks", ())) == num_test)

    found = [read_record(record_path(workdir, model, split, seed)) for model in models]
    if all(map(usable, found)):
        return found
    found = [(reused or {}).get((model, split, seed)) for model in models]
    if not all(map(usable, found)):
        return None
    for record in found:
        write_record(workdir, record)
    return found


def machine_info() -> dict:
    cpu_model = ""
    try:
        cpu_model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "")
    except OSError:
        pass
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "code": json.loads(os.environ.get(SNAPSHOT_ENV, "null") or "null"),
    }


# ----- data -----


@dataclass
class BenchData:
    """The prepared dataset as every job reads it."""

    dataset: Path
    spec: dict
    rows: SequenceRows
    catalog: MovieCatalog

    @classmethod
    def load(cls, dataset: Path) -> BenchData:
        spec = load_feature_spec(dataset)
        movies, sequences = load_tables(dataset)
        return cls(dataset, spec, read_sequences(sequences), MovieCatalog.from_table(movies, spec))

    @property
    def cold(self) -> np.ndarray:
        return self.catalog.cold_item.numpy()

    def examples(self, split: str, stage: str) -> EvaluationExamples:
        return evaluation_examples(self.rows, split, stage, self.cold)

    def train(self, split: str) -> Sequences:
        """Every user's training part under `split` (users with none left out)."""
        return training_part(self.rows, split, self.cold).nonempty()

    def train_counts(self, split: str) -> np.ndarray:
        """Training ratings per movie under `split` (the head/tail split of the report)."""
        return movie_frequency(self.train(split), len(self.catalog))

    def attach_text(self, cache_root: Path, max_length: int) -> None:
        states, lengths = build_text_cache(self.catalog.texts, cache_root=cache_root, encoder_name=TEXT_ENCODER,
                                           revision=None, max_length=max_length, show_progress=False)
        self.catalog.attach_text_cache(states, lengths)


def build_text_cache_timed(data: BenchData, cache_root: Path, max_length: int) -> dict:
    """Build (or load) the frozen encoder's text cache once for every run, timing it: a one-time, per-catalog cost
    that is in no model's training CPU-seconds."""
    directory = text_cache_dir(cache_root, encoder_name=TEXT_ENCODER, revision=None, max_length=max_length)
    index = directory / "index.json"
    known = json.loads(index.read_text()) if index.is_file() and (directory / "states.safetensors").is_file() else {}
    missing = len({text_hash(text) for text in data.catalog.texts} - set(known))
    cpu, wall = time.process_time(), time.perf_counter()
    build_text_cache(data.catalog.texts, cache_root=cache_root, encoder_name=TEXT_ENCODER, revision=None,
                     max_length=max_length, show_progress=False)
    return {"texts": len(data.catalog.texts), "texts_encoded": missing, "encoder": TEXT_ENCODER,
            "max_length": max_length, "cpu_seconds": round(time.process_time() - cpu, 2),
            "wall_seconds": round(time.perf_counter() - wall, 2), "torch_threads": torch.get_num_threads(),
            "directory": str(directory)}


# ----- baselines: score matrices over the catalog, ranked with history excluded and seeded tie-breaking -----


def rank_scores(scores: np.ndarray, examples: EvaluationExamples, part: slice, tiebreak: np.ndarray, k: int):
    """Top-k movie indices per row of `scores` (rows = examples[part]); history and non-candidates excluded (-1 pads);
    equal scores are ordered by the seeded permutation `tiebreak`."""
    scores = scores.astype(np.float64, copy=True)
    for row, seen in enumerate(examples.exclusions(part)):
        scores[row, seen] = -np.inf
    if examples.candidate_mask is not None:
        scores[:, ~examples.candidate_mask] = -np.inf
    permuted = scores[:, tiebreak]
    order = np.argsort(-permuted, axis=1, kind="stable")[:, :k]
    top = tiebreak[order]
    return np.where(np.take_along_axis(permuted, order, axis=1) == -np.inf, -1, top)


def rank_baseline(score_fn, examples: EvaluationExamples, *, seed: int, num_movies: int, batch: int = 512):
    tiebreak = np.random.default_rng(seed).permutation(num_movies)
    ranked = [
        rank_scores(score_fn(examples.histories[start : start + batch]), examples, slice(start, start + batch),
                    tiebreak, RANK_DEPTH)
        for start in range(0, len(examples), batch)
    ]
    ranked = np.concatenate(ranked) if ranked else np.zeros((0, RANK_DEPTH), np.int64)
    ranks = target_ranks(ranked, examples.targets)
    return with_depth_metrics(list_metrics(ranked, examples, num_movies=num_movies), ranks), ranks


class Ease:
    """EASE with B = I - P diag(1/diag P), P = (X^T X + lambda I)^-1. With U users, Woodbury gives
    X^T X + lambda I)^-1 = (I - X^T M X) / lambda, M = (lambda I_U + X X^T)^-1, so for a history row h and a movie j
    outside it: score_j = -(hP)_j / P_jj = (h X^T M X)_j / (1 - (X^T M X)_jj)."""

    def __init__(self, train: Sequences, num_movies: int) -> None:
        self.x = np.zeros((len(train), num_movies), np.float64)
        self.x[np.repeat(np.arange(len(train)), train.lengths()), train.all_movies()] = 1.0
        self.gram_users = self.x @ self.x.T
        self.num_movies = num_movies

    def fit(self, lam: float) -> Ease:
        m = np.linalg.inv(lam * np.eye(len(self.x)) + self.gram_users)
        self.mx = m @ self.x
        self.denominator = 1.0 - (self.mx * self.x).sum(axis=0)
        return self

    def scores(self, histories: list[UserSequence]) -> np.ndarray:
        h = np.zeros((len(histories), self.num_movies), np.float64)
        for row, history in enumerate(histories):
            h[row, history.movies] = 1.0
        return (h @ self.x.T) @ self.mx / self.denominator


class ContentKnn:
    """The classic content recommender, which needs no behaviour of the movie it ranks: a movie is its frozen-encoder
    text vector (mean-pooled token states, as sentence-transformers pools all-MiniLM-L6-v2) beside its genres
    (multi-hot), each unit length; a user is the weighted sum of the movies they rated; a movie's score is its
    cosine to that profile. No post-release feature is read."""

    def __init__(self, catalog: MovieCatalog) -> None:
        lengths = catalog.text_lengths.long()
        valid = torch.arange(catalog.text_states.shape[1]) < lengths[:, None]
        pooled = (catalog.text_states.float() * valid[..., None]).sum(1) / lengths.clamp(min=1)[:, None]
        self.text = unit_rows(pooled.double().numpy())
        bags = catalog.multi_valued["genres"].numpy()
        genres = np.zeros((len(bags), int(bags.max()) + 1))
        genres[np.repeat(np.arange(len(bags)), bags.shape[1]), bags.ravel()] = 1.0
        genres[:, :2] = 0.0  # padding and out-of-vocabulary
        self.genres = unit_rows(genres)

    def fit(self, *, genre_weight: float, weighting: str) -> ContentKnn:
        self.vectors = unit_rows(np.concatenate((self.text, genre_weight * self.genres), axis=1))
        self.weighting = weighting
        return self

    def scores(self, histories: list[UserSequence]) -> np.ndarray:
        profiles = np.zeros((len(histories), self.vectors.shape[1]))
        for row, history in enumerate(histories):
            ratings = history.ratings.astype(np.float64)
            weights = ratings - ratings.mean() if self.weighting == "centered" else ratings
            profiles[row] = weights @ self.vectors[history.movies]
        return unit_rows(profiles) @ self.vectors.T


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def baseline_config(name: str, split: str, seed: int, args) -> dict:
    config = {"model": name, "split": split, "seed": seed, "rank_depth": RANK_DEPTH}
    if name == "ease":
        return {**config, "ease_lambdas": list(args.ease_lambdas)}
    if name == "content_knn":
        return {**config, "grid": {key: list(values) for key, values in CONTENT_KNN_GRID.items()},
                "text_encoder": TEXT_ENCODER, "text_max_length": text_tokens(args)}
    return config


def baseline_records(name: str, split: str, seeds: list[int], data: BenchData, args, machine: dict) -> list[dict]:
    """One record per seed (the seed orders tied scores); EASE's lambda is chosen on validation NDCG@10.
    train_cpu_seconds: what fitting costs this process (counting; EASE's Gram matrix and its inverse at the chosen
    lambda); the lambda search is reported on its own."""
    num_movies = len(data.catalog)
    train, validation, test = data.train(split), data.examples(split, "validation"), data.examples(split, "test")
    hyper: dict = {}
    cpu, wall = time.process_time(), time.perf_counter()
    if name == "most_popular":
        counts = movie_frequency(train, num_movies).astype(np.float64)
        train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall

        def score_fn(histories):
            return np.broadcast_to(counts, (len(histories), num_movies))
    elif name == "most_voted_tmdb":
        names = data.spec["numeric_features"]["names"]
        votes = data.catalog.numeric[:, names.index("log_vote_count")].numpy().astype(np.float64)
        votes = np.where(np.isfinite(votes), votes, -1e9)  # no metadata: last (random among themselves)
        hyper["feature"] = "log_vote_count (TMDB metadata)"
        train_cpu = train_wall = None  # nothing is learned

        def score_fn(histories):
            return np.broadcast_to(votes, (len(histories), num_movies))
    elif name == "ease":
        ease = Ease(train, num_movies)
        gram_cpu, gram_wall = time.process_time() - cpu, time.perf_counter() - wall
        search_cpu = time.process_time()
        grid = {lam: rank_baseline(ease.fit(lam).scores, validation, seed=seeds[0], num_movies=num_movies)[0]["ndcg@10"]
                for lam in args.ease_lambdas}
        best = max(grid, key=grid.get)
        search_cpu = time.process_time() - search_cpu
        cpu, wall = time.process_time(), time.perf_counter()
        ease.fit(best)
        train_cpu, train_wall = gram_cpu + time.process_time() - cpu, gram_wall + time.perf_counter() - wall
        hyper.update(lambda_=best, validation_ndcg10_by_lambda={str(k): round(v, 5) for k, v in grid.items()},
                     lambda_search_cpu_seconds=round(search_cpu, 2))
        say(f"  ease {split}: validation ndcg@10 by lambda {hyper['validation_ndcg10_by_lambda']} -> lambda {best:g}")
        score_fn = ease.scores
    elif name == "content_knn":
        knn = ContentKnn(data.catalog)
        settings = [dict(zip(CONTENT_KNN_GRID, values, strict=True)) for values in itertools.product(*CONTENT_KNN_GRID.values())]
        grid = [rank_baseline(knn.fit(**setting).scores, validation, seed=seeds[0], num_movies=num_movies)[0]["ndcg@10"]
                for setting in settings]
        best = settings[int(np.argmax(grid))]
        score_fn = knn.fit(**best).scores
        train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
        hyper.update(best, features="all-MiniLM-L6-v2 text vector (frozen, mean-pooled) and genres; no post-release",
                     validation_ndcg10_by_setting={f"{s['genre_weight']:g}/{s['weighting']}": round(v, 5)
                                                   for s, v in zip(settings, grid, strict=True)})
        say(f"  content_knn {split}: validation ndcg@10 by genre weight/weighting "
            f"{hyper['validation_ndcg10_by_setting']} -> {best}")
    else:
        raise ValueError(name)
    records = []
    for seed in seeds:
        valid_metrics, _ = rank_baseline(score_fn, validation, seed=seed, num_movies=num_movies)
        metrics, ranks = rank_baseline(score_fn, test, seed=seed, num_movies=num_movies)
        records.append({
            "model": name, "split": split, "seed": seed, "metrics": metrics, "test_target_ranks": ranks,
            "validation": valid_metrics, "validation_curve": [],
            "train_cpu_seconds": None if train_cpu is None else round(train_cpu, 3),
            "train_wall_seconds": None if train_wall is None else round(train_wall, 3),
            "hyperparameters": hyper, "job": baseline_config(name, split, seed, args), "machine": machine,
        })
    return records


# ----- FusionModel: a child process per job -----


TRAINING_OPTIONS = {  # bench_quality.py options passed on, under the same names, to train_accelerate.py when given
    "eval_steps": int, "patience": int, "batch_size": int, "learning_rate": float, "hidden_size": int,
    "max_history_length": int, "text_max_length": int, "perceiver_depth": int, "perceiver_head_dim": int,
    "num_negatives": str, "post_release_dropout": float, "max_epochs": int, "dropout": float, "temperature": float,
    "user_id_dropout": float, "movie_id_dropout": float, "weight_decay": float, "num_layers": int,
    "lr_scheduler": str, "lr_decay_patience": int, "lr_cooldown_fraction": float, "embedding_lr_scale": float,
    "table_updates": str, "match_features": str, "match_init_bonus": float, "rating_loss_weight": float,
    "logq_correction": float, "window_stride": int, "score_function": str, "weight_average_decay": float,
}


def training_options(args) -> list[str]:
    """The options bench_quality.py shares, under the same names, with train_accelerate.py: only those given, so
    the FusionModel runs use train_accelerate.py's own defaults, as a user's command does."""
    given = {name: getattr(args, name) for name in TRAINING_OPTIONS if getattr(args, name) is not None}
    return [part for name, value in given.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def text_tokens(args) -> int:
    """Tokens per movie text the FusionModel runs read (the text cache is built for these)."""
    from fusionrec.training.options import build_parser

    return args.text_max_length or build_parser().get_default("text_max_length")


def fusion_settings(model: str, split: str, seed: int, args) -> list[str]:
    """train_accelerate.py's arguments apart from paths: the settings a FusionModel record depends on."""
    steps = ["--max-steps", str(args.steps)] if args.steps is not None else []
    split_options = SPLIT_OPTIONS.get(split, []) if args.post_release_dropout is None else []
    return ["--split", split, "--seed", str(seed), *steps, *training_options(args), *split_options,
            "--text-encoder", TEXT_ENCODER, *FUSION_VARIANTS[model]]


def fusion_defaults() -> dict:
    """The defaults a FusionModel run takes where its argv is silent (train_accelerate.py's options and the model
    config's fields): part of a record's settings, so a record made before a default changed is run again."""
    from configuration_fusionrec import FusionRecConfig
    from fusionrec.training.options import build_parser

    config = FusionRecConfig().to_dict()
    for key in ("transformers_version", "modeling_sha256"):
        config.pop(key, None)
    train = {action.dest: action.default for action in build_parser()._actions if action.dest != "help"}
    return json.loads(json.dumps({"config": config, "train_accelerate": train}, sort_keys=True, default=str))


def fusion_config(model: str, split: str, seed: int, args) -> dict:
    return {"model": model, "split": split, "seed": seed, "rank_depth": RANK_DEPTH,
            "train_accelerate_argv": fusion_settings(model, split, seed, args), "defaults": fusion_defaults()}


def fusion_job(model: str, split: str, seed: int, args, workdir: Path, dataset: Path) -> Job:
    """A child process of bench_quality.py that trains, scores and writes the records (see run_fusion_job)."""
    command = [
        sys.executable, str(BENCH / "bench_quality.py"), "--run-job", f"{model}:{split}:{seed}",
        "--dataset", str(dataset), "--workdir", str(workdir), "--text-cache-dir", str(args.text_cache_dir),
        *(["--steps", str(args.steps)] if args.steps is not None else []), *training_options(args), "--threads", "1",
        "--no-snapshot",
    ]
    outputs = (model, TARGET_TIME) if model == "fusion_full" else (model,)
    return Job(model, split, seed, fusion_config(model, split, seed, args), outputs, command)


@torch.no_grad()
def score_fusion(model, data: BenchData, examples: EvaluationExamples, vectors, *, query_at_target: bool = False):
    """Test metrics of a FusionModel (as fusionrec.evaluation.evaluate_split, plus @RANK_DEPTH) and target ranks."""
    ranked, predicted = rank_examples(model, examples, vectors, k=RANK_DEPTH, query_at_target=query_at_target)
    metrics = compute_metrics(ranked, predicted, examples, num_movies=len(data.catalog), k_values=K_VALUES)
    ranks = target_ranks(ranked, examples.targets)
    return with_depth_metrics(metrics, ranks), ranks


def run_fusion_job(model: str, split: str, seed: int, args, data: BenchData, workdir: Path, machine: dict) -> list[dict]:
    """Train one FusionModel variant (checkpoint chosen on validation NDCG@10), score test, write its records.
    fusion_full also yields TARGET_TIME: the same checkpoint, user vectors read as of each target's own time."""
    from fusionrec.cli import load_model
    from fusionrec.training import loop, options

    output = workdir / "runs" / f"{model}-{split}-seed{seed}"
    shutil.rmtree(output, ignore_errors=True)  # an unfinished earlier attempt: start over
    settings = fusion_settings(model, split, seed, args)
    argv = ["--dataset", str(data.dataset), "--output-dir", str(output), "--text-cache-dir", str(args.text_cache_dir),
            "--report-to", "none", "--no-progress", *settings]
    summary = loop.train(options.parse_args(argv))
    net = load_model(output / "best")
    if "--no-text" not in settings:
        data.attach_text(args.text_cache_dir, net.config.text_max_length)
    test = data.examples(split, "test")
    vectors = catalog_vectors(net, data.catalog.for_split(split))
    metrics, ranks = score_fusion(net, data, test, vectors)
    evaluations = [h for h in summary["history"] if "ndcg@10" in h]
    best = next((h for h in evaluations if h["step"] == summary["best_step"]), {})
    new_movies = catalog_vectors(net, data.catalog.without_post_release(torch.ones(len(data.catalog), dtype=torch.bool)))
    as_if_new, _ = score_fusion(net, data, data.examples(split, "validation"), new_movies)
    record = {
        "model": model, "split": split, "seed": seed, "metrics": metrics, "test_target_ranks": ranks,
        "validation": {**{k: v for k, v in best.items() if k not in ("step", "cpu_seconds")},
                       "ndcg@10_no_post_release": as_if_new["ndcg@10"]},
        "validation_curve": [[round(h["cpu_seconds"], 2), round(h["ndcg@10"], 6)] for h in evaluations],
        "train_cpu_seconds": round(summary["cpu_seconds"], 2),
        "train_wall_seconds": round(summary["wall_seconds"], 2),
        "train": {"steps": summary["global_step"], "best_step": summary["best_step"],
                  "stopped_early": summary["stopped_early"], "steps_per_epoch": summary["steps_per_epoch"],
                  "validation_steps": [h["step"] for h in evaluations]},
        "hyperparameters": {"train_accelerate_argv": settings},
        "job": fusion_config(model, split, seed, args),
        "machine": machine,
    }
    if split == "cold_items" and "--no-content-features" not in settings:  # labelled beside T3, never part of it
        snapshot, snapshot_ranks = score_fusion(net, data, test, catalog_vectors(net, data.catalog))
        record["with_post_release"] = {"metrics": snapshot, "test_target_ranks": snapshot_ranks}
    records = [record]
    if model == "fusion_full":
        at_target, at_target_ranks = score_fusion(net, data, test, vectors, query_at_target=True)
        records.append({
            **record, "model": TARGET_TIME, "metrics": at_target, "test_target_ranks": at_target_ranks,
            "validation": {}, "validation_curve": [],
            "note": "the fusion_full checkpoint of this split/seed, its user vectors read as of each test target's own "
            "time (PROTOCOL.md: a labelled variant that knows the gap to the event it predicts); not used by a target",
        })
    for written in reversed(records):  # the job's own record last: its presence means the job finished
        write_record(workdir, written)
    shutil.rmtree(output / "final", ignore_errors=True)
    return records


# ----- peers: RecTools in its own virtualenv, a child process per job -----


def peer_settings(name: str, args) -> dict:
    settings = dict(PEER_SETTINGS[name])
    if args.peer_patience is not None:
        settings["patience"] = args.peer_patience
    if args.peer_max_epochs is not None:
        settings["max_epochs"] = args.peer_max_epochs
    return settings


def peer_config(name: str, split: str, seed: int, args) -> dict:
    return {"model": name, "split": split, "seed": seed, "rank_depth": RANK_DEPTH, "settings": peer_settings(name, args),
            "fit": PEER_FIT}


def peer_job(name: str, split: str, seed: int, args, workdir: Path, data: BenchData, machine: dict) -> Job:
    settings = peer_settings(name, args)
    raw = workdir / "peers" / f"{name}-{split}-seed{seed}.json"
    command = [
        str(args.peer_python), str(PEER_SCRIPT), "--dataset", str(data.dataset), "--model", settings["model"],
        "--split", split, "--seed", str(seed), "--n-factors", str(settings["n_factors"]),
        "--session-max-len", str(settings["session_max_len"]), "--max-epochs", str(settings["max_epochs"]),
        "--patience", str(settings["patience"]), "--item-features", settings["item_features"], "--threads", "1",
        "--output", str(raw), "--state-dir", str(raw.with_suffix(".state")),
    ]
    config = peer_config(name, split, seed, args)

    def finish() -> list[dict]:
        peer = json.loads(raw.read_text(encoding="utf-8"))
        record = peer_record(peer, name=name, examples=data.examples(split, "test"), num_movies=len(data.catalog),
                             config=config, machine=machine)
        write_record(workdir, record)
        return [record]

    return Job(name, split, seed, config, (name,), command, finish)


def check_same_targets(peer_examples: list, examples: EvaluationExamples, name: str) -> None:
    """Both sides must rank the same test targets, in the same order: the peer's [user_index, target] pairs against
    ours. A difference means the peer read another prepared folder or split, and the paired comparison is void."""
    ours = [[int(h.user_index), int(t)] for h, t in zip(examples.histories, examples.targets, strict=True)]
    theirs = [[int(u), int(t)] for u, t in peer_examples]
    if ours == theirs:
        return
    row = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    peer_row = theirs[row] if row < len(theirs) else "none"
    our_row = ours[row] if row < len(ours) else "none"
    raise PeerMismatch(
        f"{name}: the peer's test examples differ from ours ({len(theirs)} vs {len(ours)}; first difference at row "
        f"{row}: peer [user_index, target] {peer_row}, ours {our_row}); both must rank the same test targets: give the "
        "peer the same prepared dataset folder and split"
    )


def check_fed_everything(data: dict, name: str) -> None:
    """PROTOCOL: a peer learns from every training event and every training movie; a fit that saw fewer (RecTools
    keeps each user's last session_max_len + 1 events unless the history is cut into chunks) is not comparable."""
    for what in ("events", "movies"):
        seen, total = data.get(f"training_{what}_in_fit"), data.get(f"training_{what}")
        if seen is None or seen != total:
            raise PeerMismatch(f"{name}: its fit saw {seen} of the {total} training {what}; a peer must learn from "
                               "all of them (bench/peers/rectools_peer.py fits long histories as consecutive chunks)")


def ranks_from_peer(ranks: list[int], *, base: int, depth: int = RANK_DEPTH) -> list[int]:
    """A peer's `base`-based ranks (-1: missed) as our 0-based ranks, -1 beyond `depth`."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if np.any((ranks != -1) & (ranks < base)):
        raise PeerMismatch(f"peer ranks below their base {base} (other than -1): {sorted(set(ranks[ranks < base]))[:5]}")
    shifted = ranks - base
    return np.where((ranks != -1) & (shifted < depth), shifted, -1).tolist()


def peer_record(peer: dict, *, name: str, examples: EvaluationExamples, num_movies: int, config: dict,
                machine: dict) -> dict:
    """A peer's JSON (bench/peers/README.md) as our record: the same test targets checked, ranks 0-based to
    RANK_DEPTH, metrics computed with our metric code from its top-20 lists and ranks."""
    check_same_targets(peer["test_examples"], examples, name)
    check_fed_everything(peer["data"], name)
    ranks = ranks_from_peer(peer["test_target_ranks"], base=peer["rank_base"])
    top = pad_ranked_lists([np.asarray(row, dtype=np.int64) for row in peer["test_top20"]])
    if top.shape[1] < max(K_VALUES):
        top = np.pad(top, ((0, 0), (0, max(K_VALUES) - top.shape[1])), constant_values=-1)
    in_top = target_ranks(top, examples.targets)
    expected = [r if 0 <= r < top.shape[1] else -1 for r in ranks]
    if in_top != expected:
        row = next(i for i, (a, b) in enumerate(zip(in_top, expected, strict=True)) if a != b)
        raise PeerMismatch(f"{name}: its test rank and its top-20 list disagree at row {row} "
                           f"(top list: {in_top[row]}, rank: {expected[row]}, both 0-based)")
    metrics = with_depth_metrics(list_metrics(top, examples, num_movies=num_movies), ranks)
    valid_ranks = ranks_from_peer(peer["validation_target_ranks"], base=peer["rank_base"])
    curve = peer["validation_curve_ndcg@10"]
    curve_cpu = peer["validation_curve_cpu_seconds"]
    return {
        "model": name, "split": peer["split"], "seed": peer["seed"],
        "metrics": metrics,
        "test_target_ranks": ranks,
        "validation": {**rank_metrics(valid_ranks, K_VALUES), "callback_ndcg@10": peer["validation"].get("callback_ndcg@10")},
        "validation_curve": [[cpu, value] for cpu, value in zip(curve_cpu, curve, strict=True)],
        "train_cpu_seconds": peer["train_cpu_seconds"],
        "train_wall_seconds": peer["train_wall_seconds"],
        "train": {"best_epoch": peer["best_epoch"], "epochs_run": peer["epochs_run"],
                  "cpu_seconds_to_best_epoch": curve_cpu[peer["best_epoch"] - 1] if peer["best_epoch"] else None,
                  "data": peer["data"], "test_rectools_metrics": peer["test_rectools_metrics"]},
        "hyperparameters": peer["settings"],
        "versions": peer["versions"],
        "job": config,
        "machine": machine,
    }


# ----- running child jobs -----


def run_children(jobs: list[Job], *, parallel: int, workdir: Path, report: Callable[[Job], None]) -> list[Job]:
    """Run the jobs' commands, at most `parallel` at once, each logging to WORKDIR/logs/; a finished peer job is
    converted by its `finish`. Returns the jobs that failed (the others' records are on disk)."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    pending, running, failed = list(jobs), {}, []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                job.log = workdir / "logs" / f"{job.model}-{job.split}-seed{job.seed}.log"
                with job.log.open("w") as log:
                    process = subprocess.Popen(job.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                running[process] = job
                say(f"  started {job.name} (pid {process.pid}, log {job.log})")
            time.sleep(1)
            for process in [p for p in running if p.poll() is not None]:
                job = running.pop(process)
                if process.returncode != 0:
                    tail = job.log.read_text(errors="replace").splitlines()[-15:]
                    say(f"  FAILED {job.name} (exit {process.returncode}); last lines of {job.log}:\n    "
                        + "\n    ".join(tail))
                    failed.append(job)
                    continue
                if job.finish is not None:
                    job.records = job.finish()
                else:
                    job.records = [read_record(record_path(workdir, model, job.split, job.seed)) for model in job.outputs]
                report(job)
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.wait()
    return failed
