"""Raw movie files -> a prepared fusionrec dataset folder (see docs/DATASET_FORMAT.md): the `prepare()` run and the
`prepare_dataset.py` / `fusionrec-prepare` command.

Sources (fusionrec/data/sources/):
  tmdb       Kaggle "The Movies Dataset" (movies_metadata.csv, keywords.csv, credits.csv, links*.csv, ratings*.csv)
  movielens  MovieLens "latest" (ratings.csv, movies.csv, links.csv, tags.csv) or 100K (u.data, u.item, u.user)
  synthetic  a seeded generator that writes a small Kaggle-schema dataset, then runs the tmdb path on it

Examples:
  python prepare_dataset.py --source synthetic --output data/prepared/synthetic
  python prepare_dataset.py --source tmdb --data-dir the-movies-dataset --output data/prepared/tmdb-small
  python prepare_dataset.py --source tmdb --data-dir the-movies-dataset --ratings ratings.csv --output data/prepared/tmdb

Ratings are processed column-wise (pyarrow/numpy, no per-row Python); metadata is parsed per movie with
`ast.literal_eval` (never eval/pickle). The output folder is built next to the target and renamed into place,
so an existing dataset is replaced only after a successful run; the same inputs give byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fusionrec.data.card import LICENSES, dataset_card
from fusionrec.data.reading import DEFAULT_RATING_RANGE, logger, stage
from fusionrec.data.sources.movielens import load_movielens
from fusionrec.data.sources.synthetic import generate_synthetic
from fusionrec.data.sources.tmdb import load_tmdb
from fusionrec.data.splits import build_interactions, choose_cold_items, temporal_cutoffs
from fusionrec.data.tables import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MIN_COUNT,
    OOV_INDEX,
    PAD_INDEX,
    TEXT_MAX_CAST,
    TEXT_MAX_KEYWORDS,
    TEXT_TEMPLATE,
    build_movies_table,
    build_sequences_table,
    write_parquet,
)
from fusionrec.errors import PrepareError
from fusionrec.hub import push_to_hub
from fusionrec.io import atomic_directory, sha256_file

FORMAT_VERSION = 1
SOURCES = ("tmdb", "movielens", "synthetic")


@dataclass
class PrepareSummary:
    output_dir: Path
    source: str
    num_movies: int
    num_users: int
    counts: dict[str, int]
    skipped: dict[str, int]
    timings: dict[str, float]
    feature_spec: dict[str, Any] = field(repr=False)
    pushed_to: str | None = None

    def format_table(self) -> str:
        rows = [("output", str(self.output_dir)), ("source", self.source)]
        rows += [(k, f"{v:,}") for k, v in self.counts.items()]
        rows += [("num_movies", f"{self.num_movies:,}"), ("num_users (incl. 0)", f"{self.num_users:,}")]
        splits = self.feature_spec["splits"]
        rows += [
            (
                "temporal test/valid cutoff",
                f"{splits['temporal']['test_cutoff']} / {splits['temporal']['valid_cutoff']}",
            ),
            ("cold items", f"{splits['cold_items']['num_cold_items']:,}"),
        ]
        width = max(len(k) for k, _ in rows)
        out = io.StringIO()
        for key, value in rows:
            out.write(f"{key:<{width}}  {value}\n")
        out.write("\nskipped (reason: rows)\n")
        if not self.skipped:
            out.write("  (nothing skipped)\n")
        reason_width = max((len(k) for k in self.skipped), default=0)
        for reason, count in self.skipped.items():
            out.write(f"  {reason:<{reason_width}}  {count:>12,}\n")
        return out.getvalue()


def merge_options(defaults: dict[str, int], given: dict[str, int] | None, what: str) -> dict[str, int]:
    """Per-feature settings: the defaults, then "all" (every feature), then named features; unknown names stop."""
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if key == "all":
            merged = dict.fromkeys(merged, int(value))
            continue
        if key not in merged:
            raise PrepareError(
                f"unknown feature {key!r} for {what}; choose from {', '.join(merged)} or 'all'"
            )
        merged[key] = int(value)
    return merged


def check_output_folder(output: Path) -> None:
    """Stop before replacing something that is not a prepared dataset (a file, or a folder of other files)."""
    output = Path(output).absolute()
    if output.exists():
        if not output.is_dir():
            raise PrepareError(f"--output {output} exists and is not a directory; choose another path")
        if any(output.iterdir()) and not (output / "feature_spec.json").is_file():
            raise PrepareError(
                f"--output {output} exists and is not a prepared dataset (no feature_spec.json); "
                "remove it or choose another path"
            )


def write_dataset(
    folder: Path, movies: pa.Table, sequences: pa.Table, spec: dict[str, Any], license_id: str, note: str
) -> None:
    """Write the contract's files into `folder` (the temp dir of atomic_directory)."""
    write_parquet(movies, folder / "movies" / "train-00000-of-00001.parquet")
    write_parquet(sequences, folder / "sequences" / "train-00000-of-00001.parquet")
    (folder / "feature_spec.json").write_text(
        json.dumps(spec, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    (folder / "README.md").write_text(dataset_card(spec, license_id, note), encoding="utf-8")


def prepare(
    source: str = "synthetic",
    output: str | os.PathLike = "data/prepared/synthetic",
    data_dir: str | os.PathLike | None = None,
    *,
    ratings: str | None = None,
    links: str | None = None,
    seed: int = 0,
    min_counts: dict[str, int] | None = None,
    max_lengths: dict[str, int] | None = None,
    loo_min_interactions: int = 3,
    temporal_quantile: float = 0.9,
    cold_fraction: float = 0.1,
    cold_min_interactions: int = 5,
    cold_seed: int | None = None,
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
    include_unrated: bool = False,
    synthetic_users: int = 300,
    synthetic_movies: int = 600,
    synthetic_ratings_per_user: float = 83.0,
    raw_dir: str | os.PathLike | None = None,
    push_to_hub_repo: str | None = None,
    hub_api: Any = None,
    hub_private: bool | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Raw files -> dataset folder at `output` (docs/DATASET_FORMAT.md). Returns a PrepareSummary.

    Raises PrepareError for bad input (missing file/column, bad options, nothing left after cleaning)."""
    if source not in SOURCES:
        raise PrepareError(f"unknown --source {source!r}; choose one of {', '.join(SOURCES)}")
    if not 0.0 < temporal_quantile < 1.0:
        raise PrepareError(f"--temporal-quantile must be in (0, 1), got {temporal_quantile}")
    if not 0.0 <= cold_fraction <= 1.0:
        raise PrepareError(f"--cold-fraction must be in [0, 1], got {cold_fraction}")
    mins = merge_options(DEFAULT_MIN_COUNT, min_counts, "--min-count")
    maxes = merge_options(DEFAULT_MAX_LENGTH, max_lengths, "--max-length")
    cold_seed = seed if cold_seed is None else cold_seed
    output = Path(output)
    timings: dict[str, float] = {}
    skipped: Counter = Counter()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="fusionrec-raw-") as scratch:
        if source == "synthetic":
            raw = Path(raw_dir) if raw_dir is not None else Path(scratch)
            if raw_dir is not None and output.absolute() in Path(raw).absolute().parents:
                raise PrepareError(
                    f"--raw-dir {raw} is inside --output {output}, which is replaced; pick another"
                )
            with stage("generate synthetic", timings):
                generate_synthetic(raw, seed, synthetic_users, synthetic_movies, synthetic_ratings_per_user)
            data = load_tmdb(raw, skipped, rating_range=rating_range, include_unrated=include_unrated,
                             progress=progress, timings=timings)  # fmt: skip
        elif source == "tmdb":
            if data_dir is None:
                raise PrepareError("--source tmdb needs --data-dir with the Kaggle CSV files")
            data = load_tmdb(Path(data_dir), skipped, ratings=ratings, links=links, rating_range=rating_range,
                             include_unrated=include_unrated, progress=progress, timings=timings)  # fmt: skip
        else:
            if data_dir is None:
                raise PrepareError("--source movielens needs --data-dir with the MovieLens files")
            data = load_movielens(Path(data_dir), skipped, ratings=ratings, rating_range=rating_range,
                                  include_unrated=include_unrated, timings=timings)  # fmt: skip
        with stage("checksums", timings):
            source_files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in data.files}

    rc = data.ratings
    rows_read = rc.rows_read
    if rc.user.size == 0:
        raise PrepareError(
            f"no valid ratings left in {data.files[0].name} (skipped: {dict(skipped)}); check the file"
        )
    with stage("order + deduplicate", timings):
        inter = build_interactions(rc, skipped)
        del rc, data.ratings
    num_users = int(inter.user_ids.size) + 1
    records = [data.records[int(m)] for m in inter.movie_ids] + list(data.extra_records)
    num_movies = len(records)
    with stage("splits", timings):
        num_ratings = np.bincount(inter.movie_index, minlength=num_movies)
        cold = choose_cold_items(num_ratings, cold_fraction, cold_min_interactions, cold_seed)
        cutoffs = temporal_cutoffs(inter.timestamp, temporal_quantile)
        sequences = build_sequences_table(inter, num_users, loo_min_interactions, cutoffs)
    with stage("encode movies", timings):
        movies, feature_parts = build_movies_table(records, num_ratings, cold, mins, maxes)
    ratings_kept = int(inter.rating.size)
    ratings_skipped = sum(v for k, v in skipped.items() if k.startswith("ratings/"))
    if ratings_kept + ratings_skipped != rows_read:  # pragma: no cover - internal consistency guard
        raise RuntimeError(f"ratings accounting broke: {ratings_kept} + {ratings_skipped} != {rows_read}")
    counts = {
        "ratings_read": int(rows_read),
        "ratings_kept": ratings_kept,
        "users": num_users - 1,
        "movies": num_movies,
        "movies_rated": int(inter.movie_ids.size),
        "movies_with_metadata": int(sum(r.has_metadata for r in records)),
    }
    spec: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "num_movies": num_movies,
        "num_users": num_users,
        "pad_index": PAD_INDEX,
        "oov_index": OOV_INDEX,
        "numeric_features": feature_parts["numeric_features"],
        "categorical_features": feature_parts["categorical_features"],
        "multi_valued_features": feature_parts["multi_valued_features"],
        "text": {
            "column": "text",
            "template": TEXT_TEMPLATE,
            "max_keywords": TEXT_MAX_KEYWORDS,
            "max_cast": TEXT_MAX_CAST,
            "empty_parts": "dropped (e.g. ' ()' without a year, 'Keywords: .' without keywords); whitespace collapsed",
        },
        "rating": {"min": float(inter.rating.min()), "max": float(inter.rating.max())},
        "time": {"min_timestamp": int(inter.timestamp.min()), "max_timestamp": int(inter.timestamp.max())},
        "splits": {
            "default": "leave_one_out",
            "leave_one_out": {"min_interactions": loo_min_interactions},
            "temporal": {
                "quantile": temporal_quantile,
                "test_cutoff": cutoffs[0],
                "valid_cutoff": cutoffs[1],
            },
            "cold_items": {
                "seed": cold_seed,
                "fraction": cold_fraction,
                "min_interactions": cold_min_interactions,
                "num_cold_items": int(cold.sum()),
            },
        },
        "counts": counts,
        "skipped": dict(sorted(skipped.items())),
        "missing_values": feature_parts["missing_values"],
        "source_files": source_files,
    }
    if source == "synthetic":
        spec["synthetic"] = {
            "seed": seed,
            "users": synthetic_users,
            "movies": synthetic_movies,
            "ratings_per_user": synthetic_ratings_per_user,
        }
    license_id, note = LICENSES[source]
    with stage("write", timings):
        check_output_folder(output)
        with atomic_directory(output) as tmp:
            write_dataset(tmp, movies, sequences, spec, license_id, note)
    pushed = None
    if push_to_hub_repo:
        if source == "movielens":
            logger.warning(
                "MovieLens terms forbid redistribution; pushing %s anyway as asked", push_to_hub_repo
            )
        with stage("push to hub", timings):
            push_to_hub(output, push_to_hub_repo, api=hub_api, private=hub_private)
        pushed = push_to_hub_repo
    timings["total"] = time.perf_counter() - started
    return PrepareSummary(
        output_dir=output,
        source=source,
        num_movies=num_movies,
        num_users=num_users,
        counts=counts,
        skipped=spec["skipped"],
        timings=timings,
        feature_spec=spec,
        pushed_to=pushed,
    )


def key_values(items: Sequence[str] | None, flag: str) -> dict[str, int]:
    """Repeated `--flag NAME=N` / `--flag N` values -> {NAME: N, "all": N}."""
    out: dict[str, int] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            key, value = "all", item
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise PrepareError(f"{flag} expects NAME=N or N, got {item!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_dataset.py",
        description="Build a fusionrec dataset folder (parquet + feature_spec.json + dataset card) from raw files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--source", choices=SOURCES, default="synthetic", help="input kind")
    parser.add_argument("--data-dir", type=Path, help="folder with the raw files (tmdb, movielens)")
    parser.add_argument(
        "--ratings",
        help="ratings file in --data-dir (tmdb default: ratings_small.csv with links_small.csv if present, "
        "else ratings.csv with links.csv)",
    )
    parser.add_argument("--links", help="links file in --data-dir (default: matches --ratings)")
    parser.add_argument("--output", type=Path, required=True, help="dataset folder to (re)create")
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator and cold-item seed")
    parser.add_argument("--cold-seed", type=int, help="cold-item seed (default: --seed)")
    parser.add_argument(
        "--cold-fraction", type=float, default=0.1, help="share of eligible movies held out cold"
    )
    parser.add_argument(
        "--cold-min-interactions", type=int, default=5, help="ratings a movie needs to be cold"
    )
    parser.add_argument(
        "--temporal-quantile", type=float, default=0.9, help="temporal split cut-off quantile"
    )
    parser.add_argument("--loo-min-interactions", type=int, default=3, help="leave-one-out needs n >= this")
    parser.add_argument(
        "--min-count", action="append", metavar="NAME=N",
        help=f"vocabulary min count per feature (repeatable; 'all=N' or N for all). Defaults: {DEFAULT_MIN_COUNT}",
    )  # fmt: skip
    parser.add_argument(
        "--max-length", action="append", metavar="NAME=N",
        help=f"max bag length per multi-valued feature (repeatable). Defaults: {DEFAULT_MAX_LENGTH}",
    )  # fmt: skip
    parser.add_argument(
        "--rating-range", type=float, nargs=2, default=list(DEFAULT_RATING_RANGE), metavar=("MIN", "MAX"),
        help="ratings outside are skipped",
    )  # fmt: skip
    parser.add_argument(
        "--include-unrated", action="store_true", help="also put metadata movies nobody rated in the catalog"
    )
    parser.add_argument("--synthetic-users", type=int, default=300)
    parser.add_argument("--synthetic-movies", type=int, default=600)
    parser.add_argument("--synthetic-ratings-per-user", type=float, default=83.0)
    parser.add_argument("--raw-dir", type=Path, help="keep the synthetic raw CSVs here (default: a temp dir)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the folder as a Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--quiet", action="store_true", help="only print the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        summary = prepare(
            args.source,
            args.output,
            args.data_dir,
            ratings=args.ratings,
            links=args.links,
            seed=args.seed,
            min_counts=key_values(args.min_count, "--min-count"),
            max_lengths=key_values(args.max_length, "--max-length"),
            loo_min_interactions=args.loo_min_interactions,
            temporal_quantile=args.temporal_quantile,
            cold_fraction=args.cold_fraction,
            cold_min_interactions=args.cold_min_interactions,
            cold_seed=args.cold_seed,
            rating_range=(args.rating_range[0], args.rating_range[1]),
            include_unrated=args.include_unrated,
            synthetic_users=args.synthetic_users,
            synthetic_movies=args.synthetic_movies,
            synthetic_ratings_per_user=args.synthetic_ratings_per_user,
            raw_dir=args.raw_dir,
            push_to_hub_repo=args.push_to_hub,
            hub_private=True if args.private else None,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format_table(), end="")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in summary.timings.items())
    print(f"\ntimings: {timing}")
    if summary.pushed_to:
        print(f"pushed to https://huggingface.co/datasets/{summary.pushed_to}")
    return 0
