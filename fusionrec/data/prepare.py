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
  python prepare_dataset.py --update data/prepared/tmdb --data-dir todays-files --output data/prepared/tmdb-today

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

import pyarrow as pa

from fusionrec.data.build import (
    SPLIT_DEFAULTS,
    fresh_settings,
    fresh_tables,
    previous_settings,
    updated_tables,
)
from fusionrec.data.card import LICENSES, dataset_card
from fusionrec.data.reading import DEFAULT_RATING_RANGE, logger, stage
from fusionrec.data.sources.movielens import load_movielens
from fusionrec.data.sources.synthetic import generate_synthetic
from fusionrec.data.sources.tmdb import load_tmdb
from fusionrec.data.tables import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MIN_COUNT,
    OOV_INDEX,
    PAD_INDEX,
    TEXT_MAX_CAST,
    TEXT_MAX_KEYWORDS,
    TEXT_TEMPLATE,
    write_parquet,
)
from fusionrec.data.update import (
    read_previous,
    read_previous_spec,
)
from fusionrec.errors import InputError, PrepareError, one_line
from fusionrec.hub import HubUploadError, upload_folder
from fusionrec.io import atomic_output, check_writable, sha256_file

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
        if "lineage" in self.feature_spec:
            lineage = self.feature_spec["lineage"]
            added = lineage["added"]
            rows += [("updated from", f"{lineage['previous']['folder']} (sha256 {lineage['previous']['sha256'][:12]})")]
            rows += [(k, f"{v:,}") for k, v in added.items() if k != "vocabulary"]
            rows += [("vocabulary_added", ", ".join(f"{k} {v}" for k, v in added["vocabulary"].items() if v) or "none")]
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
    """Write the contract's files into `folder` (the temporary folder of atomic_output)."""
    write_parquet(movies, folder / "movies" / "train-00000-of-00001.parquet")
    write_parquet(sequences, folder / "sequences" / "train-00000-of-00001.parquet")
    (folder / "feature_spec.json").write_text(
        json.dumps(spec, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    (folder / "README.md").write_text(dataset_card(spec, license_id, note), encoding="utf-8")


def prepare(
    source: str | None = None,
    output: str | os.PathLike = "data/prepared/synthetic",
    data_dir: str | os.PathLike | None = None,
    *,
    update_from: str | os.PathLike | None = None,
    ratings: str | None = None,
    links: str | None = None,
    seed: int = 0,
    min_counts: dict[str, int] | None = None,
    max_lengths: dict[str, int] | None = None,
    loo_min_interactions: int | None = None,
    temporal_quantile: float | None = None,
    cold_fraction: float | None = None,
    cold_min_interactions: int | None = None,
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
    """Raw files -> dataset folder at `output` (docs/DATASET_FORMAT.md). Returns a PrepareSummary. Split settings
    left None take their defaults (SPLIT_DEFAULTS; the cold seed defaults to `seed`).

    With `update_from` (a prepared folder), the raw files are added to that folder's data and every stored index,
    vocabulary entry and statistic is kept (fusionrec/data/update.py); the settings come from that folder.

    Raises PrepareError for bad input (missing file/column, bad options, nothing left after cleaning) and
    WriteError for an output that cannot be written; either way an existing dataset at `output` is untouched."""
    given = {
        "loo_min_interactions": loo_min_interactions,
        "temporal_quantile": temporal_quantile,
        "cold_fraction": cold_fraction,
        "cold_min_interactions": cold_min_interactions,
        "cold_seed": cold_seed,
    }
    if source is not None and source not in SOURCES:
        raise PrepareError(f"unknown --source {source!r}; choose one of {', '.join(SOURCES)}")
    previous = None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if update_from is not None:
        settings = previous_settings(read_previous_spec(update_from), Path(update_from), source, given, min_counts, max_lengths)
        with stage("read previous", timings):
            previous = read_previous(update_from)
    else:
        settings = fresh_settings(source, given, min_counts, max_lengths, seed)
    source, splits = settings.source, settings.splits
    if not 0.0 < splits["temporal_quantile"] < 1.0:
        raise PrepareError(f"--temporal-quantile must be in (0, 1), got {splits['temporal_quantile']}")
    if not 0.0 <= splits["cold_fraction"] <= 1.0:
        raise PrepareError(f"--cold-fraction must be in [0, 1], got {splits['cold_fraction']}")
    output = Path(output)
    check_output_folder(output)
    check_writable(output.absolute().parent)  # fail now, not after reading every file
    skipped: Counter = Counter()

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

    rows_read = data.ratings.rows_read
    if data.ratings.user.size == 0 and previous is None:
        name = data.files[0].name
        if rows_read == 0:
            raise PrepareError(f"{name} has a header but no data rows; use the complete ratings file")
        reasons = ", ".join(f"{k.split('/', 1)[1]} {v}" for k, v in sorted(skipped.items()) if k.startswith("ratings/"))
        raise PrepareError(f"no valid ratings left in {name}: all {rows_read} rows skipped ({reasons}); check the file")
    if previous is None:
        tables = fresh_tables(data, settings, skipped, timings)
        new_kept = int(tables.inter.rating.size)
    else:
        tables = updated_tables(previous, data, settings, skipped, timings)
        added = tables.lineage["added"]
        new_kept = added["ratings_added"] + added["ratings_replaced"] + added["ratings_unchanged"]
    inter = tables.inter
    ratings_skipped = sum(v for k, v in skipped.items() if k.startswith("ratings/"))
    if new_kept + ratings_skipped != rows_read:  # pragma: no cover - internal consistency guard
        raise RuntimeError(f"ratings accounting broke: {new_kept} + {ratings_skipped} != {rows_read}")
    num_movies, num_users = tables.movies.num_rows, int(inter.user_ids.size) + 1
    counts = {
        "ratings_read": int(rows_read),
        "ratings_kept": int(inter.rating.size),
        "users": num_users - 1,
        "movies": num_movies,
        **tables.counts,
    }
    spec: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "num_movies": num_movies,
        "num_users": num_users,
        "pad_index": PAD_INDEX,
        "oov_index": OOV_INDEX,
        "numeric_features": tables.features["numeric_features"],
        "categorical_features": tables.features["categorical_features"],
        "multi_valued_features": tables.features["multi_valued_features"],
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
            "leave_one_out": {"min_interactions": splits["loo_min_interactions"]},
            "temporal": {
                "quantile": splits["temporal_quantile"],
                "test_cutoff": tables.cutoffs[0],
                "valid_cutoff": tables.cutoffs[1],
            },
            "cold_items": {
                "seed": splits["cold_seed"],
                "fraction": splits["cold_fraction"],
                "min_interactions": splits["cold_min_interactions"],
                "num_cold_items": tables.num_cold,
            },
        },
        "counts": counts,
        "skipped": dict(sorted(skipped.items())),
        "missing_values": tables.features["missing_values"],
        "source_files": source_files,
    }
    if source == "synthetic":
        spec["synthetic"] = {
            "seed": seed,
            "users": synthetic_users,
            "movies": synthetic_movies,
            "ratings_per_user": synthetic_ratings_per_user,
        }
    if tables.lineage is not None:
        spec["lineage"] = tables.lineage
    license_id, note = LICENSES[source]
    with stage("write", timings):
        check_output_folder(output)
        with atomic_output(output, folder=True) as tmp:
            write_dataset(tmp, tables.movies, tables.sequences, spec, license_id, note)
    pushed = None
    if push_to_hub_repo:
        if source == "movielens":
            logger.warning(
                "MovieLens terms forbid redistribution; pushing %s anyway as asked", push_to_hub_repo
            )
        with stage("push to hub", timings):
            try:
                upload_folder(output, push_to_hub_repo, repo_type="dataset", message="Upload fusionrec prepared dataset",
                              api=hub_api, private=hub_private, report=logger.info)
            except HubUploadError as error:
                raise PrepareError(str(error)) from None
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
    parser.add_argument(
        "--source", choices=SOURCES, default=None, help="input kind (default: synthetic; with --update: the previous one)"
    )
    parser.add_argument("--data-dir", type=Path, help="folder with the raw files (tmdb, movielens)")
    parser.add_argument(
        "--ratings",
        help="ratings file in --data-dir (tmdb default: ratings_small.csv with links_small.csv if present, "
        "else ratings.csv with links.csv)",
    )
    parser.add_argument("--links", help="links file in --data-dir (default: matches --ratings)")
    parser.add_argument("--output", type=Path, required=True, help="dataset folder to (re)create")
    parser.add_argument(
        "--update", type=Path, metavar="PREVIOUS_DIR",
        help="add --data-dir's files to this prepared folder: every movie, user and vocabulary index is kept, new "
        "ones appended (see 'Updating with new data' in README.md). --data-dir holds files of the same source: the "
        "whole current files, or only the new rows (ratings, plus links and metadata rows of the new movies); "
        "ratings already stored are recognised. Split and vocabulary settings come from PREVIOUS_DIR",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator and cold-item seed")
    parser.add_argument("--cold-seed", type=int, help="cold-item seed (default: --seed)")
    parser.add_argument(
        "--cold-fraction", type=float, help=f"share of eligible movies held out cold (default {SPLIT_DEFAULTS['cold_fraction']})"
    )
    parser.add_argument(
        "--cold-min-interactions", type=int,
        help=f"ratings a movie needs to be cold (default {SPLIT_DEFAULTS['cold_min_interactions']})",
    )  # fmt: skip
    parser.add_argument(
        "--temporal-quantile", type=float,
        help=f"temporal split cut-off quantile (default {SPLIT_DEFAULTS['temporal_quantile']})",
    )  # fmt: skip
    parser.add_argument(
        "--loo-min-interactions", type=int,
        help=f"leave-one-out needs n >= this (default {SPLIT_DEFAULTS['loo_min_interactions']})",
    )  # fmt: skip
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
            update_from=args.update,
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
    except InputError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(summary.format_table(), end="")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in summary.timings.items())
    print(f"\ntimings: {timing}")
    if summary.pushed_to:
        print(f"pushed to https://huggingface.co/datasets/{summary.pushed_to}")
    return 0
