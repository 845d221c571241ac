"""Training throughput of fusionrec's data path against the original design, side by side in one run.

What is measured (training examples per second; an "example" is one target position, i.e. one movie the model
learns to predict from the steps before it):

* original: the design fusionrec replaces, re-implemented here faithfully and only for this benchmark. The
  prepared sample's ratings and movies are loaded into an SQLite database (stdlib sqlite3, temp dir). Every training
  example (a user's history window + one target) runs its own queries: one for the history rows and the target
  joined with their movie features and texts, one for its uniform negatives. The movie texts of that example
  (history + target + negatives) are tokenised and run through the frozen text encoder with no cache, then the
  batch goes through the same FusionModel forward + backward + AdamW step.
* fusionrec: prepared parquet -> text cache built once per movie (its one-time cost is measured on a fresh cache
  and reported on its own and amortised over one epoch) -> `TrainingCollator` batches of history windows (every
  step of a window is a target) -> the same model forward + backward + AdamW step.

Same data (the leave_one_out training part of the real Kaggle sample), same model (default `FusionRecConfig` sizes,
all-MiniLM-L6-v2 as the frozen text encoder for both), same batch size (rows per model batch) and the same number of
uniform negatives per batch. Each pipeline is time-boxed (`--original-seconds`, `--fusionrec-seconds`) after one
untimed warm-up step; a batch that has started is always finished and counted.

The text cache of the full catalog is read from the persistent cache (`--cache-root`, default the project's
`$FUSIONREC_CACHE/text` or `~/.cache/fusionrec/text`); if it is cold, this run builds it first (one-time, minutes
on a small CPU) and reports that build too. The one-time cost row always comes from a fresh build of
`--cache-build-movies` movies in a temp cache, extrapolated to the whole catalog (or measured on all of it with
`--cache-build-movies 0`).

Run (from the repository root):

    python bench/bench_vs_original.py            # 3-5 minutes on 2 CPU cores (warm text cache)
    python bench/bench_vs_original.py --quick    # smoke run, about a minute
    python bench/bench_vs_original.py --help

Writes bench/results/vs_original.json: a list of {"pipeline", "metric", "value", "unit"} records (machine info as
pipeline "machine").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sample_data import DEFAULT_SAMPLE_DIR, require_sample_dir  # noqa: E402

from configuration_fusionrec import FusionRecConfig  # noqa: E402
from fusionrec.data.catalog import load_catalog  # noqa: E402
from fusionrec.data.collator import TrainingCollator, movie_frequency  # noqa: E402
from fusionrec.data.loading import load_tables  # noqa: E402
from fusionrec.data.sequences import read_sequences, train_sequence, training_windows  # noqa: E402
from fusionrec.data.text_cache import build_text_cache, default_cache_root, text_cache_dir, text_hash  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from modeling_fusionrec import (  # noqa: E402
    PACKAGED_MINILM,
    FusionModel,
    encode_texts,
    load_text_encoder,
    text_encoder_hidden_size,
)

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "vs_original.json"
SPLIT = "leave_one_out"


# ----- shared helpers -----


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every sample benchmark shares: where the data and the text cache are, and the cache-build sample."""
    parser.add_argument(
        "--dataset", help="prepared dataset folder; default: prepare the Kaggle sample into a temp dir"
    )
    parser.add_argument(
        "--data-dir", default=DEFAULT_SAMPLE_DIR, help="raw Kaggle sample (used when --dataset is not given)"
    )
    parser.add_argument(
        "--cache-root",
        help="persistent text cache root (default: $FUSIONREC_CACHE/text or ~/.cache/fusionrec/text)",
    )
    parser.add_argument(
        "--cache-build-movies",
        type=int,
        default=256,
        help="movies encoded into a fresh cache to time the one-time build (0: all)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training examples/s: the original per-example SQLite + re-encode pipeline vs fusionrec's "
        "text cache + TrainingCollator, same data, model and batch size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per model batch, both pipelines")
    parser.add_argument(
        "--num-negatives", type=int, default=256, help="uniform negatives per batch, both pipelines"
    )
    parser.add_argument(
        "--original-seconds", type=float, default=90.0, help="time box of the original pipeline"
    )
    parser.add_argument(
        "--fusionrec-seconds", type=float, default=45.0, help="time box of the fusionrec pipeline"
    )
    parser.add_argument(
        "--encoder-batch-size", type=int, default=32, help="texts per encoder call in the original pipeline"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON records file")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny time boxes and cache sample (about a minute)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.original_seconds, args.fusionrec_seconds, args.cache_build_movies = 5.0, 5.0, 32
        args.batch_size = min(args.batch_size, 4)
        args.num_negatives = min(args.num_negatives, 64)
    if args.batch_size < 1 or args.num_negatives < 0:
        parser.error("--batch-size must be >= 1 and --num-negatives >= 0")
    return args


_STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def machine_records() -> list[dict]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    info = {
        "cpu_count": (os.cpu_count(), "cores"),
        "cpu_model": (cpu_model or platform.processor(), ""),
        "torch_num_threads": (torch.get_num_threads(), "threads"),
        "torch_version": (torch.__version__, ""),
        "transformers_version": (transformers.__version__, ""),
        "python_version": (platform.python_version(), ""),
        "platform": (platform.platform(), ""),
        "load_average_1min_at_start": (round(os.getloadavg()[0], 2), "processes"),
    }
    return [
        {"pipeline": "machine", "metric": key, "value": value, "unit": unit}
        for key, (value, unit) in info.items()
    ]


def isolate_datasets_cache(workdir: Path) -> None:
    """Give `datasets` a private Arrow cache in the run's temp dir: the run leaves nothing behind in the user's cache
    and can never read back a stale table of another folder with the same name."""
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets-cache")
    if "datasets" in sys.modules:
        import datasets

        datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])


def prepared_dataset(args: argparse.Namespace, workdir: Path) -> Path:
    if args.dataset:
        return Path(args.dataset)
    output = workdir / "dataset"
    command = [
        sys.executable,
        str(ROOT / "prepare_dataset.py"),
        "--source",
        "tmdb",
        "--data-dir",
        str(require_sample_dir(args.data_dir)),
    ]
    done = subprocess.run(
        [*command, "--output", str(output), "--quiet"], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(
            f"prepare_dataset.py failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    return output


def model_config(dataset: Path) -> FusionRecConfig:
    """Default sizes; the only override is the frozen text encoder (all-MiniLM-L6-v2) and its width."""
    return FusionRecConfig.from_feature_spec(
        dataset,
        text_encoder_name_or_path=PACKAGED_MINILM,
        text_hidden_size=text_encoder_hidden_size(PACKAGED_MINILM),
    )


def time_text_cache_build(texts: list[str], config, cache_root: Path, *, movies: int, seed: int):
    """Build a fresh text cache for a seeded sample of `movies` texts (all when <= 0) with the library's
    build_text_cache. Returns (sample, encoder load seconds, movies/s of the encoding, extrapolated seconds for all
    texts including one encoder load)."""
    sample = texts if movies <= 0 else random.Random(seed).sample(texts, min(movies, len(texts)))
    started = time.perf_counter()
    load_text_encoder(config.text_encoder_name_or_path, revision=config.text_encoder_revision)
    encoder_load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    build_text_cache(
        sample,
        cache_root=cache_root,
        encoder_name=config.text_encoder_name_or_path,
        revision=config.text_encoder_revision,
        max_length=config.text_max_length,
        show_progress=False,
    )
    sample_seconds = time.perf_counter() - started
    rate = len(sample) / max(sample_seconds - encoder_load_seconds, 1e-9)
    full_seconds = encoder_load_seconds + len(texts) / rate
    say(
        f"text cache: {len(sample)} movies in {sample_seconds:.1f}s (encoder load {encoder_load_seconds:.1f}s) = "
        f"{rate:.1f} movies/s -> {len(texts)} movies ~ {full_seconds:.0f}s"
    )
    return sample, encoder_load_seconds, rate, full_seconds


def uncached_texts(texts: list[str], cache_root: Path, config) -> int:
    """How many of `texts` the persistent text cache lacks (load_catalog encodes exactly these)."""
    directory = text_cache_dir(
        cache_root,
        encoder_name=config.text_encoder_name_or_path,
        revision=config.text_encoder_revision,
        max_length=config.text_max_length,
    )
    index = directory / "index.json"
    known = (
        json.loads(index.read_text())
        if index.is_file() and (directory / "states.safetensors").is_file()
        else {}
    )
    return len({text_hash(text) for text in texts} - set(known))


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive than wall time to other jobs on a shared
    machine (wall time is still the headline number)."""
    times = os.times()
    return times.user + times.system


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_step(model: FusionModel, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    output = model(**batch)
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(output.loss.detach())


# ----- the original pipeline (SQLite per example, text re-encoded every time) -----


def build_database(path: Path, movies, rows: list[dict], spec: dict) -> None:
    """ratings(user_index, position, movie_index, rating, timestamp) and movies(movie_index, text, features as JSON)."""
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE movies (movie_index INTEGER PRIMARY KEY, text TEXT, numeric TEXT, categorical TEXT, multi_valued TEXT)"
    )
    connection.execute(
        "CREATE TABLE ratings (user_index INTEGER, position INTEGER, movie_index INTEGER, rating REAL, timestamp INTEGER,"
        " PRIMARY KEY (user_index, position))"
    )
    categorical_names = list(spec["categorical_features"])
    bag_names = list(spec["multi_valued_features"])
    count = len(movies)
    # Each column is read once, outside the per-movie loop.
    texts = [str(text) for text in movies["text"]]
    numeric = list(movies["numeric"]) if spec["numeric_features"]["names"] else [[] for _ in range(count)]
    columns = {name: list(movies[f"cat_{name}"]) for name in categorical_names}
    bags = {name: list(movies[f"bag_{name}"]) for name in bag_names}
    connection.executemany(
        "INSERT INTO movies VALUES (?, ?, ?, ?, ?)",
        (
            (
                i,
                texts[i],
                json.dumps(np.asarray(numeric[i], dtype=np.float64).tolist()),
                json.dumps({name: int(columns[name][i]) for name in categorical_names}),
                json.dumps({name: np.asarray(bags[name][i], dtype=np.int64).tolist() for name in bag_names}),
            )
            for i in range(count)
        ),
    )
    connection.executemany(
        "INSERT INTO ratings VALUES (?, ?, ?, ?, ?)",
        (
            (row["user_index"], position, movie, rating, timestamp)
            for row in rows
            for position, (movie, rating, timestamp) in enumerate(
                zip(
                    row["movie_index"].tolist(),
                    row["rating"].tolist(),
                    row["timestamp"].tolist(),
                    strict=True,
                )
            )
        ),
    )
    connection.commit()
    connection.close()


HISTORY_SQL = """
SELECT r.movie_index, r.rating, r.timestamp, m.text, m.numeric, m.categorical, m.multi_valued
FROM ratings AS r JOIN movies AS m ON m.movie_index = r.movie_index
WHERE r.user_index = ? AND r.position BETWEEN ? AND ?
ORDER BY r.position
"""


class OriginalPipeline:
    """One example = (user, target position): its own queries, its own uncached text encoding."""

    def __init__(
        self,
        database: Path,
        *,
        config,
        spec: dict,
        negative_pool: np.ndarray,
        negatives_per_example: int,
        frequency_share: torch.Tensor,
        encoder_batch_size: int,
        seed: int,
    ) -> None:
        self.connection = sqlite3.connect(database)
        self.config = config
        self.max_lengths = {
            name: int(feature["max_length"]) for name, feature in spec["multi_valued_features"].items()
        }
        self.num_numeric = len(spec["numeric_features"]["names"])
        self.negative_pool = negative_pool
        self.negatives_per_example = negatives_per_example
        self.frequency_share = frequency_share
        self.encoder, self.tokenizer = load_text_encoder(
            config.text_encoder_name_or_path, revision=config.text_encoder_revision
        )
        self.encoder_batch_size = encoder_batch_size
        self.rng = np.random.default_rng(seed)
        self.timings = {"sql": 0.0, "encode": 0.0, "collate": 0.0}
        self.texts_encoded = 0

    def fetch(self, user_index: int, position: int) -> dict:
        """The example's history window (the steps before `position`, at most max_history_length - 1) and target, and
        its negatives, each movie with its features and freshly encoded text states."""
        start = time.perf_counter()
        first = max(0, position - (self.config.max_history_length - 1))
        steps = self.connection.execute(HISTORY_SQL, (user_index, first, position)).fetchall()
        negatives = self.rng.choice(self.negative_pool, size=self.negatives_per_example)
        negative_rows = (
            self.connection.execute(
                f"SELECT movie_index, text, numeric, categorical, multi_valued FROM movies WHERE movie_index IN "
                f"({','.join('?' * len(negatives))})",
                [int(n) for n in negatives],
            ).fetchall()
            if len(negatives)
            else []
        )
        movies = {}
        for movie, _, _, text, numeric, categorical, bags in steps:
            movies[movie] = (text, json.loads(numeric), json.loads(categorical), json.loads(bags))
        for movie, text, numeric, categorical, bags in negative_rows:
            movies.setdefault(movie, (text, json.loads(numeric), json.loads(categorical), json.loads(bags)))
        middle = time.perf_counter()
        texts = [step[3] for step in steps] + [row[1] for row in negative_rows]
        states, mask = encode_texts(
            texts,
            encoder=self.encoder,
            tokenizer=self.tokenizer,
            max_length=self.config.text_max_length,
            batch_size=self.encoder_batch_size,
        )
        self.timings["sql"] += middle - start
        self.texts_encoded += len(texts)
        self.timings["encode"] += time.perf_counter() - middle
        encoded = {}
        for row, movie in enumerate([step[0] for step in steps] + [row[0] for row in negative_rows]):
            encoded.setdefault(movie, (states[row], mask[row]))
        return {
            "user_index": user_index,
            "movies": [step[0] for step in steps],
            "ratings": [step[1] for step in steps],
            "timestamps": [step[2] for step in steps],
            "negatives": [int(n) for n in negatives],
            "features": movies,
            "text": encoded,
        }

    def batch(self, examples: list[tuple[int, int]], *, deadline: float = float("inf")) -> tuple[dict, int]:
        """Fetch and encode the examples one by one (stopping early, after at least one, once `deadline` passes)."""
        fetched = []
        for user, position in examples:
            fetched.append(self.fetch(user, position))
            if time.perf_counter() > deadline:
                break
        start = time.perf_counter()
        batch = collate_original(
            fetched,
            config=self.config,
            num_numeric=self.num_numeric,
            max_lengths=self.max_lengths,
            frequency_share=self.frequency_share,
            pool_size=len(self.negative_pool),
            num_negatives=self.negatives_per_example * len(fetched),
        )
        self.timings["collate"] += time.perf_counter() - start
        return batch, len(fetched)


def collate_original(
    fetched: list[dict],
    *,
    config,
    num_numeric: int,
    max_lengths: dict[str, int],
    frequency_share: torch.Tensor,
    pool_size: int,
    num_negatives: int,
) -> dict:
    """The examples as one model batch: right-padded windows (history + target) and the features and text states of
    every movie they use plus their negatives, with log_q computed as TrainingCollator does."""
    length = max(len(example["movies"]) for example in fetched)
    batch_size = len(fetched)
    movies = torch.zeros(batch_size, length, dtype=torch.long)
    ratings = torch.zeros(batch_size, length)
    timestamps = torch.zeros(batch_size, length, dtype=torch.long)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    features, texts = {}, {}
    for row, example in enumerate(fetched):
        count = len(example["movies"])
        movies[row, :count] = torch.tensor(example["movies"])
        ratings[row, :count] = torch.tensor(example["ratings"])
        timestamps[row, :count] = torch.tensor(example["timestamps"])
        mask[row, :count] = True
        for movie, value in example["features"].items():
            features.setdefault(movie, value)
            texts.setdefault(movie, example["text"][movie])
    candidates = torch.tensor(sorted(features), dtype=torch.long)
    rows = [features[int(movie)] for movie in candidates]
    numeric = torch.tensor([row[1] for row in rows], dtype=torch.float32).reshape(len(rows), num_numeric)
    categorical = {
        name: torch.tensor([row[2][name] for row in rows], dtype=torch.long) for name in rows[0][2]
    }
    multi_valued = {}
    for name, max_length in max_lengths.items():
        padded = torch.zeros(len(rows), max_length, dtype=torch.long)
        for i, row in enumerate(rows):
            bag = row[3][name][:max_length]
            padded[i, : len(bag)] = torch.tensor(bag, dtype=torch.long)
        multi_valued[name] = padded
    lengths = torch.tensor([int(texts[int(movie)][1].sum()) for movie in candidates])
    longest = max(int(lengths.max()), 1)
    text_states = torch.stack(
        [
            torch.nn.functional.pad(states[:longest], (0, 0, 0, longest - min(len(states), longest)))
            for states, _ in (texts[int(movie)] for movie in candidates)
        ]
    )
    text_mask = torch.arange(longest) < lengths[:, None]
    targets = int(mask.sum())
    probability = targets * frequency_share[candidates] + num_negatives / pool_size
    movie_inputs = {"movie_indices": candidates}
    if config.use_content_features:
        movie_inputs.update(numeric=numeric, categorical=categorical, multi_valued=multi_valued)
    if config.use_text:
        movie_inputs.update(text_states=text_states, text_mask=text_mask)
    movie_inputs["log_q"] = torch.log(probability.clamp(max=1.0)).float()
    return {
        "history_movie_indices": movies,
        "history_ratings": ratings,
        "history_timestamps": timestamps,
        "history_mask": mask,
        "user_indices": torch.tensor([example["user_index"] for example in fetched], dtype=torch.long),
        "movie_inputs": movie_inputs,
    }


def check_same_data(original: OriginalPipeline, catalog, user_index: int, position: int) -> dict:
    """The original path's features and text states of one example equal the prepared catalog's and the cache's."""
    fetched = original.fetch(user_index, position)
    worst_state, same_features = 0.0, True
    for movie, (_, numeric, categorical, bags) in fetched["features"].items():
        expected = catalog.numeric[movie]
        same_features &= bool(
            torch.equal(torch.tensor(numeric, dtype=torch.float32).isnan(), expected.isnan())
        )
        same_features &= bool(
            torch.allclose(torch.tensor(numeric, dtype=torch.float32).nan_to_num(), expected.nan_to_num())
        )
        same_features &= all(
            int(catalog.categorical[name][movie]) == value for name, value in categorical.items()
        )
        for name, bag in bags.items():
            stored = catalog.multi_valued[name][movie]
            same_features &= stored[stored != 0].tolist() == bag[: len(stored)]
        states, mask = fetched["text"][movie]
        length = int(catalog.text_lengths[movie])
        same_features &= int(mask.sum()) == length
        difference = (states[:length].float() - catalog.text_states[movie, :length].float()).abs().max()
        worst_state = max(worst_state, float(difference))
    return {
        "same_features": same_features,
        "max_text_state_difference": worst_state,
        "movies": len(fetched["features"]),
    }


# ----- timing loops -----


def time_box(make_batch, step, seconds: float) -> dict:
    """Run batches until `seconds` have passed (a started batch is finished); returns examples, batches, seconds."""
    examples = batches = 0
    start, cpu = time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        item = make_batch()
        if item is None:
            break
        batch, count = item
        step(batch)
        examples += count
        batches += 1
    return {
        "examples": examples,
        "batches": batches,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds() - cpu,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    seed_everything(args.seed)
    records = machine_records()

    def record(pipeline: str, metric: str, value, unit: str) -> None:
        records.append({"pipeline": pipeline, "metric": metric, "value": value, "unit": unit})

    with tempfile.TemporaryDirectory(prefix="bench_vs_original-") as temp:
        workdir = Path(temp)
        isolate_datasets_cache(workdir)
        started = time.perf_counter()
        dataset = prepared_dataset(args, workdir)
        record("data", "prepare_dataset_seconds", round(time.perf_counter() - started, 2), "s")
        say(f"dataset ready: {dataset}")
        config = model_config(dataset)
        movies, sequences = load_tables(dataset)
        rows = read_sequences(sequences)

        # fusionrec one-time cost: the text cache, timed on a fresh cache of a sample of movies.
        texts = [str(text) for text in movies["text"]]
        sample, encoder_load_seconds, cache_rate, full_build_seconds = time_text_cache_build(
            texts, config, workdir / "fresh-cache", movies=args.cache_build_movies, seed=args.seed
        )

        cache_root = Path(args.cache_root) if args.cache_root else default_cache_root()
        missing = uncached_texts(texts, cache_root, config)
        if missing:
            say(
                f"text cache at {cache_root}: {missing} of {len(texts)} movies not cached yet; building them now "
                f"(one-time, ~{missing / cache_rate / 60:.0f} min at the rate above)"
            )
        started = time.perf_counter()
        catalog, spec = load_catalog(dataset, config, cache_root=cache_root, show_progress=bool(missing))
        catalog_seconds = time.perf_counter() - started
        record("fusionrec", "catalog_load_seconds", round(catalog_seconds, 2), "s")
        say(f"catalog with cached text states loaded in {catalog_seconds:.1f}s")
        record("fusionrec", "catalog_load_uncached_movies", missing, "movies")
        if missing == len(texts):
            full_build_seconds = catalog_seconds
            record("fusionrec", "full_text_cache_build_seconds_measured", round(catalog_seconds, 1), "s")

        cold = catalog.cold_item.numpy()
        train = [train_sequence(row, SPLIT, cold) for row in rows]
        epoch_examples = int(sum(len(sequence.movies) for sequence in train))
        frequency = movie_frequency(train, len(catalog))
        negative_pool = np.arange(len(catalog))
        share = torch.from_numpy(frequency / max(frequency.sum(), 1.0))

        # Same initial weights for both pipelines.
        torch.manual_seed(args.seed)
        initial = FusionModel(config).state_dict()

        def fresh_model() -> tuple[FusionModel, torch.optim.Optimizer]:
            model = FusionModel(config)
            model.load_state_dict(initial)
            model.train()
            return model, torch.optim.AdamW(model.parameters(), lr=args.learning_rate)

        # ----- original -----
        started = time.perf_counter()
        database = workdir / "ratings.sqlite"
        build_database(database, movies, rows, spec)
        record("original", "sqlite_build_seconds_one_time", round(time.perf_counter() - started, 2), "s")
        say(f"SQLite database built in {time.perf_counter() - started:.1f}s")
        negatives_per_example = (
            max(1, round(args.num_negatives / args.batch_size)) if args.num_negatives else 0
        )
        original = OriginalPipeline(
            database,
            config=config,
            spec=spec,
            negative_pool=negative_pool,
            negatives_per_example=negatives_per_example,
            frequency_share=share,
            encoder_batch_size=args.encoder_batch_size,
            seed=args.seed,
        )
        examples = [
            (sequence.user_index, position) for sequence in train for position in range(len(sequence.movies))
        ]
        random.Random(args.seed).shuffle(examples)
        probe = next(example for example in examples if 10 <= example[1] < 20)
        check = check_same_data(original, catalog, *probe)
        say(
            f"same data check on one example ({check['movies']} movies): features equal = {check['same_features']}, "
            f"max |text state difference| = {check['max_text_state_difference']:.4f}"
        )
        record("check", "original_features_equal_catalog", check["same_features"], "bool")
        record(
            "check", "original_vs_cache_max_text_state_difference", check["max_text_state_difference"], "abs"
        )

        model, optimizer = fresh_model()
        cursor = iter(range(0, len(examples), args.batch_size))
        warm_up = [example for example in examples if example[1] < 8][:2]  # short windows: a cheap warm-up
        train_step(model, optimizer, original.batch(warm_up)[0])  # untimed
        original.timings = dict.fromkeys(original.timings, 0.0)
        original.texts_encoded = 0

        deadline = [float("inf")]

        def original_batch():
            start = next(cursor, None)
            return (
                None
                if start is None
                else original.batch(examples[start : start + args.batch_size], deadline=deadline[0])
            )

        model_seconds = [0.0]

        def timed_step(batch):
            start = time.perf_counter()
            train_step(model, optimizer, batch)
            model_seconds[0] += time.perf_counter() - start

        say(f"original: running for {args.original_seconds:.0f}s ...")
        deadline[0] = time.perf_counter() + args.original_seconds
        result_original = time_box(original_batch, timed_step, args.original_seconds)
        original_rate = result_original["examples"] / result_original["seconds"]
        original_parts = {**original.timings, "model": model_seconds[0]}
        texts_per_example = original.texts_encoded / max(result_original["examples"], 1)
        epoch_texts_per_example = (
            float(np.mean([min(position, config.max_history_length - 1) + 1 for _, position in examples]))
            + negatives_per_example
        )
        original.connection.close()
        del model, optimizer

        # ----- fusionrec -----
        windows = list(training_windows(train, window=config.max_history_length))
        random.Random(args.seed).shuffle(windows)
        collator = TrainingCollator(
            catalog,
            config=config,
            movie_frequency=frequency,
            negative_pool=negative_pool,
            num_negatives=args.num_negatives,
            seed=args.seed,
        )
        model, optimizer = fresh_model()
        train_step(model, optimizer, collator(windows[:2]))  # warm-up, untimed
        window_cursor = iter(range(2, len(windows), args.batch_size))
        collate_seconds = [0.0]
        model_seconds = [0.0]

        def fusionrec_batch():
            start = next(window_cursor, None)
            if start is None:
                return None
            began = time.perf_counter()
            batch = collator(windows[start : start + args.batch_size])
            collate_seconds[0] += time.perf_counter() - began
            return batch, int(batch["target_mask"].sum())

        say(f"fusionrec: running for {args.fusionrec_seconds:.0f}s ...")
        result_fusionrec = time_box(fusionrec_batch, timed_step, args.fusionrec_seconds)
        fusionrec_rate = result_fusionrec["examples"] / result_fusionrec["seconds"]
        amortised_seconds = full_build_seconds + epoch_examples / fusionrec_rate
        amortised_rate = epoch_examples / amortised_seconds

    # ----- records and table -----
    record("data", "training_examples_per_epoch", epoch_examples, "examples")
    record("data", "num_movies", len(texts), "movies")
    record("data", "num_users", len(rows), "users")
    record("settings", "batch_size", args.batch_size, "rows")
    record("settings", "num_negatives_per_batch", args.num_negatives, "movies")
    record("settings", "original_negatives_per_example", negatives_per_example, "movies")
    record("settings", "max_history_length", config.max_history_length, "steps")
    record("settings", "text_encoder", config.text_encoder_name_or_path, "")
    record("settings", "text_max_length", config.text_max_length, "tokens")
    record("settings", "hidden_size", config.hidden_size, "")
    record("settings", "original_time_box_seconds", args.original_seconds, "s")
    record("settings", "fusionrec_time_box_seconds", args.fusionrec_seconds, "s")
    record("settings", "seed", args.seed, "")
    record("settings", "quick", args.quick, "bool")
    for name, result in (("original", result_original), ("fusionrec", result_fusionrec)):
        record(name, "timed_examples", result["examples"], "examples")
        record(name, "timed_batches", result["batches"], "batches")
        record(name, "timed_seconds", round(result["seconds"], 2), "s")
        record(name, "timed_cpu_seconds", round(result["cpu_seconds"], 2), "s")
        record(
            name,
            "examples_per_cpu_second",
            result["examples"] / max(result["cpu_seconds"], 1e-9),
            "examples/cpu-s",
        )
    record("original", "examples_per_second", original_rate, "examples/s")
    without_encode = result_original["examples"] / max(
        result_original["seconds"] - original_parts["encode"], 1e-9
    )
    record("original", "examples_per_second_without_encode_time_derived", without_encode, "examples/s")
    record("original", "texts_encoded_per_timed_example", texts_per_example, "texts")
    record("original", "texts_encoded_per_example_epoch_mean", epoch_texts_per_example, "texts")
    for part, seconds in original_parts.items():
        record("original", f"share_{part}", seconds / result_original["seconds"], "fraction")
    record("fusionrec", "share_collate", collate_seconds[0] / result_fusionrec["seconds"], "fraction")
    record("fusionrec", "share_model", model_seconds[0] / result_fusionrec["seconds"], "fraction")
    record("fusionrec", "text_cache_sample_movies", len(sample), "movies")
    record("fusionrec", "text_cache_build_movies_per_second", cache_rate, "movies/s")
    record("fusionrec", "text_encoder_load_seconds", encoder_load_seconds, "s")
    record("fusionrec", "text_cache_build_seconds_one_time", full_build_seconds, "s")
    record("fusionrec", "examples_per_second_excluding_text_cache", fusionrec_rate, "examples/s")
    record("fusionrec", "examples_per_second_including_text_cache_one_epoch", amortised_rate, "examples/s")
    record("speedup", "fusionrec_excluding_text_cache_over_original", fusionrec_rate / original_rate, "x")
    record(
        "speedup",
        "fusionrec_including_text_cache_one_epoch_over_original",
        amortised_rate / original_rate,
        "x",
    )
    per_cpu = {
        name: result["examples"] / max(result["cpu_seconds"], 1e-9)
        for name, result in (("original", result_original), ("fusionrec", result_fusionrec))
    }
    record(
        "speedup", "fusionrec_over_original_per_cpu_second", per_cpu["fusionrec"] / per_cpu["original"], "x"
    )
    record("machine", "load_average_1min_at_end", round(os.getloadavg()[0], 2), "processes")
    record("machine", "peak_rss_mib", round(peak_rss_mib(), 1), "MiB")

    def detail(result: dict) -> str:
        return (
            f"{result['examples']} ex / {result['batches']} batches / {result['seconds']:.0f}s wall, "
            f"{result['cpu_seconds']:.0f} cpu-s"
        )

    table = [
        ("original: SQLite per example + re-encode", original_rate, 1.0, detail(result_original)),
        (
            "fusionrec, text cache excluded",
            fusionrec_rate,
            fusionrec_rate / original_rate,
            detail(result_fusionrec),
        ),
        (
            "fusionrec, text cache included (1 epoch)",
            amortised_rate,
            amortised_rate / original_rate,
            f"cache {full_build_seconds:.0f}s + epoch {epoch_examples} ex",
        ),
    ]
    print()
    print(
        f"training throughput, {len(rows)} users / {len(texts)} movies, batch {args.batch_size} rows, "
        f"{args.num_negatives} negatives/batch, torch threads {torch.get_num_threads()}, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"{'pipeline':<44} {'examples/s':>12} {'speedup':>9}  detail")
    for name, rate, speedup, detail in table:
        print(f"{name:<44} {rate:>12.2f} {speedup:>8.1f}x  {detail}")
    print(
        f"per CPU-second (less sensitive to other load): original {per_cpu['original']:.2f}, fusionrec "
        f"{per_cpu['fusionrec']:.1f} examples/cpu-s = {per_cpu['fusionrec'] / per_cpu['original']:.0f}x"
    )
    print(
        f"original encoded {texts_per_example:.1f} movie texts per timed example (epoch mean "
        f"{epoch_texts_per_example:.1f}: history window + target + {negatives_per_example} negatives)"
    )
    print(
        f"derived: the original without its encoder time (a text cache, still one target per example) would do "
        f"{without_encode:.2f} examples/s; fusionrec's remaining {fusionrec_rate / without_encode:.0f}x comes from "
        f"training every position of a window in one pass"
    )
    total = result_original["seconds"]
    print(
        "original time split: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in original_parts.items())
    )
    print(
        f"one-time text cache: {cache_rate:.1f} movies/s -> {full_build_seconds:.0f}s for {len(texts)} movies "
        f"({'measured on all' if len(sample) == len(texts) else f'extrapolated from {len(sample)}'})"
    )

    atomic_write_text(args.output, json.dumps(records, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")
    return records


if __name__ == "__main__":
    main()
