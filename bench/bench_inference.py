"""Inference speed of a default-size FusionModel on the prepared real Kaggle sample (671 users, ~9k movies), CPU.

What is measured (untrained weights: speed does not depend on them):

* text cache build, one-time: movies/s of all-MiniLM-L6-v2 through the library's `build_text_cache` into a fresh
  cache, on a seeded sample of `--cache-build-movies` movies (0: all), extrapolated to the whole catalog.
* movie vectors/s: `fusionrec.retrieval.catalog_vectors` over the whole catalog from the cached token states.
* user vectors/s: `FusionModel.calculate_user_feature` over every user's full history (the most recent
  `max_history_length` steps, as the model reads them), batched.
* exact top-10 for every user: `FusionModel.recommend` against the whole catalog with every movie of the user's
  full history excluded (via a per-user `candidate_mask`, since `recommend` itself only excludes the history window
  it is given), wall time and users/s. The user vectors are computed inside, the movie matrix is reused.
* peak RSS of the process (resource.getrusage) after each stage.

Timed stages run after a small untimed warm-up, `--repeats` times; the table shows the median. The full-catalog
text cache comes from the persistent cache (`--cache-root`, default `$FUSIONREC_CACHE/text` or
`~/.cache/fusionrec/text`); if it is cold, this run builds it first (one-time, minutes on a small CPU).

Run (from the repository root):

    python bench/bench_inference.py            # about 3 minutes on 2 CPU cores (warm text cache)
    python bench/bench_inference.py --quick    # smoke run, about a minute
    python bench/bench_inference.py --help

Writes bench/results/inference.json: a list of {"pipeline", "metric", "value", "unit"} records (machine info as
pipeline "machine").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_vs_original import (  # noqa: E402
    add_data_arguments,
    cpu_seconds,
    isolate_datasets_cache,
    machine_records,
    model_config,
    peak_rss_mib,
    prepared_dataset,
    say,
    seed_everything,
    time_text_cache_build,
    uncached_texts,
)

from fusionrec.data.catalog import load_catalog  # noqa: E402
from fusionrec.data.loading import load_tables  # noqa: E402
from fusionrec.data.sequences import UserSequence, pad_histories, read_sequences  # noqa: E402
from fusionrec.data.text_cache import default_cache_root  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from fusionrec.retrieval import catalog_vectors  # noqa: E402
from modeling_fusionrec import FusionModel  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "inference.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Movie vectors/s, user vectors/s, exact top-10 for every user and peak RSS of a default-size "
        "FusionModel on the prepared Kaggle sample, plus the one-time text cache build rate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(parser)
    parser.add_argument("--movie-batch-size", type=int, default=512, help="movies per catalog_vectors batch")
    parser.add_argument("--user-batch-size", type=int, default=256, help="users per batch")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed repetitions of each inference stage (median shown)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON records file")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: one repeat, tiny cache sample (about a minute)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.cache_build_movies = 1, 16
    if args.repeats < 1 or args.movie_batch_size < 1 or args.user_batch_size < 1 or args.k < 1:
        parser.error("--repeats, --movie-batch-size, --user-batch-size and --k must be >= 1")
    return args


def timed(function, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall seconds and CPU seconds (this process, all threads) of each repetition, and the last result."""
    seconds, cpu, result = [], [], None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        result = function()
        seconds.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - cpu_started)
    return seconds, cpu, result


def full_histories(rows: list[dict]) -> list[UserSequence]:
    """Every user's whole rating sequence (time-ordered), as the recommendation history."""
    return [
        UserSequence(
            row["user_index"],
            row["movie_index"].astype(np.int64),
            row["rating"].astype(np.float32),
            row["timestamp"].astype(np.int64),
        )
        for row in rows
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    seed_everything(args.seed)
    records = machine_records()
    process = psutil.Process()

    def record(pipeline: str, metric: str, value, unit: str) -> None:
        records.append({"pipeline": pipeline, "metric": metric, "value": value, "unit": unit})

    def record_timing(stage: str, seconds: list[float], cpu: list[float]) -> tuple[float, float]:
        """Median wall and CPU seconds of a timed stage, recorded with every repeat's wall time."""
        median, cpu_median = statistics.median(seconds), statistics.median(cpu)
        record("inference", f"{stage}_seconds_median", median, "s")
        record("inference", f"{stage}_seconds_all", seconds, "s")
        record("inference", f"{stage}_cpu_seconds_median", cpu_median, "s")
        return median, cpu_median

    def rss(stage: str) -> None:
        record("memory", f"peak_rss_after_{stage}", round(peak_rss_mib(), 1), "MiB")
        record("memory", f"rss_after_{stage}", round(process.memory_info().rss / 2**20, 1), "MiB")

    table: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_inference-") as temp:
        workdir = Path(temp)
        isolate_datasets_cache(workdir)
        dataset = prepared_dataset(args, workdir)
        config = model_config(dataset)
        movies, sequences = load_tables(dataset)
        rows = read_sequences(sequences)
        texts = [str(text) for text in movies["text"]]
        rss("loading_tables")

        sample, encoder_load_seconds, cache_rate, full_build_seconds = time_text_cache_build(
            texts, config, workdir / "fresh-cache", movies=args.cache_build_movies, seed=args.seed
        )
        record("text_cache", "sample_movies", len(sample), "movies")
        record("text_cache", "encoder_load_seconds", encoder_load_seconds, "s")
        record("text_cache", "build_movies_per_second", cache_rate, "movies/s")
        record("text_cache", "full_catalog_build_seconds_extrapolated", full_build_seconds, "s")
        table.append(
            (
                "text cache build (one-time, all-MiniLM-L6-v2)",
                f"{cache_rate:.1f} movies/s",
                f"{len(sample)} movies timed; {len(texts)} movies ~ {full_build_seconds:.0f}s",
            )
        )
        rss("text_cache_sample")

        cache_root = Path(args.cache_root) if args.cache_root else default_cache_root()
        missing = uncached_texts(texts, cache_root, config)
        if missing:
            say(
                f"text cache at {cache_root}: {missing} of {len(texts)} movies not cached yet; building them now "
                f"(one-time, ~{missing / cache_rate / 60:.0f} min)"
            )
        started = time.perf_counter()
        catalog, _ = load_catalog(dataset, config, cache_root=cache_root, show_progress=bool(missing))
        catalog_seconds = time.perf_counter() - started
        record("text_cache", "catalog_load_seconds", catalog_seconds, "s")
        record("text_cache", "catalog_load_uncached_movies", missing, "movies")
        table.append(
            (
                "catalog + cached text states load",
                f"{catalog_seconds:.1f} s",
                f"{missing} movies had to be encoded" if missing else "warm cache",
            )
        )
        rss("catalog_load")
        say(f"catalog with cached text states loaded in {catalog_seconds:.1f}s")

        torch.manual_seed(args.seed)
        model = FusionModel(config).eval()
        record("model", "parameters", sum(p.numel() for p in model.parameters()), "parameters")
        num_movies, num_users = len(catalog), len(rows)

        # ----- movie vectors -----
        with torch.no_grad():
            warm = torch.arange(min(64, num_movies))
            model.calculate_movie_feature(**catalog.inputs(warm, config=config))
        seconds, cpu, movie_vectors = timed(
            lambda: catalog_vectors(model, catalog, batch_size=args.movie_batch_size), args.repeats
        )
        median, cpu_median = record_timing("movie_vectors", seconds, cpu)
        record("inference", "movie_vectors_per_second", num_movies / median, "movies/s")
        table.append(
            (
                "movie vectors (catalog_vectors)",
                f"{num_movies / median:.0f} movies/s",
                f"{num_movies} movies in {median:.2f}s ({cpu_median:.1f} cpu-s), batch {args.movie_batch_size}",
            )
        )
        rss("movie_vectors")
        say(f"movie vectors: {num_movies / median:.0f} movies/s")

        # ----- user vectors -----
        histories = full_histories(rows)
        batches = []
        for start in range(0, num_users, args.user_batch_size):
            part = histories[start : start + args.user_batch_size]
            batch = pad_histories(part, max_length=config.max_history_length)
            seen = torch.zeros(len(part), num_movies, dtype=torch.bool)
            for row, sequence in enumerate(part):
                seen[row, torch.from_numpy(sequence.movies)] = True
            batches.append((batch, seen))

        @torch.no_grad()
        def user_vectors():
            return torch.cat(
                [
                    model.calculate_user_feature(
                        **{k: v for k, v in batch.items() if k != "user_indices"},
                        user_indices=batch["user_indices"],
                        movie_vectors=movie_vectors,
                    )
                    for batch, _ in batches
                ]
            )

        user_vectors()  # warm-up
        seconds, cpu, users = timed(user_vectors, args.repeats)
        median, cpu_median = record_timing("user_vectors", seconds, cpu)
        record("inference", "user_vectors_per_second", num_users / median, "users/s")
        table.append(
            (
                "user vectors (calculate_user_feature)",
                f"{num_users / median:.0f} users/s",
                f"{num_users} users in {median:.3f}s ({cpu_median:.2f} cpu-s), batch {args.user_batch_size}, "
                f"<= {config.max_history_length} steps",
            )
        )
        rss("user_vectors")
        say(f"user vectors: {num_users / median:.0f} users/s")

        # ----- exact top-k for every user, full history excluded -----
        def recommend_all():
            ranked = []
            for batch, seen in batches:
                top = model.recommend(
                    **{k: v for k, v in batch.items() if k != "user_indices"},
                    user_indices=batch["user_indices"],
                    movie_vectors=movie_vectors,
                    k=args.k,
                    candidate_mask=~seen,
                )
                ranked.append(top.movie_indices)
            return torch.cat(ranked)

        recommend_all()  # warm-up
        seconds, cpu, ranked = timed(recommend_all, args.repeats)
        median, cpu_median = record_timing(f"top{args.k}_all_users", seconds, cpu)
        record("inference", f"top{args.k}_users_per_second", num_users / median, "users/s")
        table.append(
            (
                f"exact top-{args.k}, every user, history excluded",
                f"{median:.3f} s",
                f"{num_users} users x {num_movies} movies = {num_users / median:.0f} users/s ({cpu_median:.2f} cpu-s)",
            )
        )
        rss("recommend")
        say(f"top-{args.k} for every user: {median:.2f}s")

        # Checks: the top-k never holds a seen movie; how many seen movies recommend's own exclusion lets through.
        seen_all = torch.cat([seen for _, seen in batches])
        leaked = int(seen_all.gather(1, ranked).sum())
        window_only = torch.cat(
            [
                model.recommend(
                    **{k: v for k, v in batch.items() if k != "user_indices"},
                    user_indices=batch["user_indices"],
                    movie_vectors=movie_vectors,
                    k=args.k,
                ).movie_indices
                for batch, _ in batches
            ]
        )
        window_leaks = int(seen_all.gather(1, window_only).sum())
        long_users = sum(len(h.movies) > config.max_history_length for h in histories)
        record("check", f"seen_movies_in_top{args.k}_full_history_mask", leaked, "movies")
        record("check", f"seen_movies_in_top{args.k}_recommend_window_exclusion_only", window_leaks, "movies")
        record("check", "users_with_history_longer_than_max_history_length", long_users, "users")
        assert torch.allclose(users, user_vectors()), "user vectors are not deterministic in eval mode"

    peak = peak_rss_mib()
    record("memory", "peak_rss_mib", round(peak, 1), "MiB")
    record("data", "num_movies", num_movies, "movies")
    record("data", "num_users", num_users, "users")
    record("settings", "text_encoder", config.text_encoder_name_or_path, "")
    record("settings", "hidden_size", config.hidden_size, "")
    record("settings", "max_history_length", config.max_history_length, "steps")
    record("settings", "repeats", args.repeats, "")
    record("settings", "seed", args.seed, "")
    record("settings", "quick", args.quick, "bool")
    record("machine", "load_average_1min_at_end", round(os.getloadavg()[0], 2), "processes")
    table.append(("peak RSS (whole run)", f"{peak:.0f} MiB", "resource.getrusage ru_maxrss"))

    print()
    print(
        f"inference, {num_users} users / {num_movies} movies, untrained default-size FusionModel "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), torch threads "
        f"{torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"{'stage':<48} {'result':>16}  detail")
    for name, value, detail in table:
        print(f"{name:<48} {value:>16}  {detail}")
    print(
        f"check: seen movies in the top-{args.k} with the full-history mask: {leaked}; with recommend's own "
        f"exclusion of the {config.max_history_length}-step window only: {window_leaks} "
        f"({long_users} users have longer histories)"
    )

    atomic_write_text(args.output, json.dumps(records, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")
    return records


if __name__ == "__main__":
    main()
