"""Benchmark prepare_dataset.py at full Kaggle scale (not a test).

Writes a synthetic ratings.csv in the Kaggle schema with 26,024,289 ratings (270,896 users over the 45k movieIds
of links.csv, no duplicate pairs, rows ordered by user then movie like the original), next to the real sample's
links.csv / movies_metadata.csv / keywords.csv / credits.csv, into a temp dir. Then it runs
`prepare(source="tmdb", ratings="ratings.csv")` end to end in a child process and reports wall time, rows/s and
the child's peak RSS. Results go to bench/results/prepare.json as [{"pipeline", "metric", "value", "unit"}].

    python bench/bench_prepare.py [--ratings 26024289] [--users 270896] [--workdir /tmp] [--keep]

Target on a 2-core machine: under 2 minutes and under 8 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from sample_data import DEFAULT_SAMPLE_DIR, require_sample_dir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "prepare.json"
FULL_RATINGS = 26_024_289
FULL_USERS = 270_896

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from fusionrec.data.prepare import prepare
start = time.perf_counter()
s = prepare("tmdb", {out!r}, {data!r}, ratings="ratings.csv")
wall = time.perf_counter() - start
print(json.dumps({{"wall": wall, "counts": s.counts, "timings": s.timings, "skipped": s.skipped,
                  "num_movies": s.num_movies, "num_users": s.num_users}}))
"""


def generate_ratings(path: Path, links: Path, num_ratings: int, num_users: int, seed: int = 0) -> None:
    """Kaggle-schema ratings.csv: userId,movieId,rating,timestamp; sorted by (userId, movieId); no duplicates."""
    rng = np.random.default_rng(seed)
    movie_ids = np.unique(
        pacsv.read_csv(links, convert_options=pacsv.ConvertOptions(include_columns=["movieId"]))
        .column("movieId")
        .to_numpy()
    )
    num_movies = movie_ids.size
    weights = 1.0 / np.arange(1, num_movies + 1) ** 0.9  # Zipf-like popularity over a shuffled catalog
    weights = weights[rng.permutation(num_movies)]
    weights /= weights.sum()
    activity = rng.lognormal(0.0, 1.2, size=num_users)
    pairs = np.zeros(0, dtype=np.int64)
    for _ in range(8):  # draw, drop duplicate pairs, top up until there are enough
        missing = num_ratings - pairs.size
        if missing <= 0:
            break
        draws = int(missing * 1.1) + 1000
        per_user = np.round(activity / activity.sum() * draws).astype(np.int64)
        users = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), np.maximum(per_user, 1))
        movies = rng.choice(num_movies, size=users.size, p=weights)
        merged = np.sort(np.concatenate([pairs, users * num_movies + movies]))  # by user then movie
        pairs = merged[np.concatenate([[True], merged[1:] != merged[:-1]])]  # no duplicate pairs
        del merged
        del users, movies
    if pairs.size > num_ratings:
        drop = rng.choice(pairs.size, size=pairs.size - num_ratings, replace=False)
        keep = np.ones(pairs.size, dtype=bool)
        keep[drop] = False
        pairs = pairs[keep]
    user = pairs // num_movies
    movie = movie_ids[pairs % num_movies]
    del pairs
    n = user.size
    ratings = rng.choice(
        np.arange(1, 11) / 2.0, size=n, p=[0.01, 0.03, 0.02, 0.07, 0.05, 0.2, 0.12, 0.27, 0.08, 0.15]
    )
    start = rng.integers(789_652_009, 1_450_000_000, size=num_users + 1)
    timestamps = np.minimum(start[user] + rng.integers(0, 60 * 86_400, size=n), 1_501_829_870)
    table = pa.table(
        {
            "userId": pa.array(user),
            "movieId": pa.array(movie),
            "rating": pa.array(ratings),
            "timestamp": pa.array(timestamps),
        }
    )
    with open(path, "wb") as handle:
        handle.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(table, handle, write_options=pacsv.WriteOptions(include_header=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratings", type=int, default=FULL_RATINGS)
    parser.add_argument("--users", type=int, default=FULL_USERS)
    parser.add_argument("--sample-dir", type=Path, default=DEFAULT_SAMPLE_DIR)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temp dir (default: system temp)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its raw/ can be --reuse'd)")
    parser.add_argument(
        "--reuse", type=Path, help="raw dir of an earlier --keep run: skip generating ratings.csv"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.workdir))
    try:
        data = work / "raw"
        generate_s = 0.0
        if args.reuse:
            data = args.reuse
        else:
            data.mkdir()
            for name in ("links.csv", "movies_metadata.csv", "keywords.csv", "credits.csv"):
                shutil.copy(require_sample_dir(args.sample_dir, option="--sample-dir") / name, data / name)
            t0 = time.perf_counter()
            generate_ratings(data / "ratings.csv", data / "links.csv", args.ratings, args.users)
            generate_s = time.perf_counter() - t0
        csv_bytes = (data / "ratings.csv").stat().st_size
        print(f"generated {data / 'ratings.csv'} ({csv_bytes / 1e6:.0f} MB) in {generate_s:.1f}s", flush=True)

        code = CHILD.format(repo=str(REPO), out=str(work / "prepared"), data=str(data))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30  # Linux: KiB
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out_bytes = sum(p.stat().st_size for p in (work / "prepared").rglob("*") if p.is_file())
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    counts = result["counts"]
    pipeline = (
        f"prepare_dataset tmdb ratings.csv (synthetic {counts['ratings_read'] / 1e6:.1f}M, sample metadata)"
    )
    records = [
        ("ratings_read", counts["ratings_read"], "rows"),
        ("ratings_kept", counts["ratings_kept"], "rows"),
        ("users", counts["users"], "users"),
        ("movies", counts["movies"], "movies"),
        ("input_csv_size", round(csv_bytes / 1e6, 1), "MB"),
        ("output_size", round(out_bytes / 1e6, 1), "MB"),
        ("wall_time_process", round(wall, 2), "s"),
        ("wall_time_prepare", round(result["wall"], 2), "s"),
        ("throughput", round(counts["ratings_read"] / result["wall"]), "rows/s"),
        ("peak_rss", round(peak_gib, 2), "GiB"),
        *((f"stage:{k}", round(v, 2), "s") for k, v in result["timings"].items() if k != "total"),
        ("cpu_count", os.cpu_count(), "cores"),
    ]
    width = max(len(r[0]) for r in records)
    print(f"\n{pipeline}")
    print(f"{'metric':<{width}}  {'value':>14}  unit")
    for metric, value, unit in records:
        print(f"{metric:<{width}}  {value:>14,}  {unit}")
    target_ok = result["wall"] < 120 and peak_gib < 8
    print(f"\ntarget (< 120 s, < 8 GB peak): {'met' if target_ok else 'MISSED'}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    payload = [{"pipeline": pipeline, "metric": m, "value": v, "unit": u} for m, v, u in records]
    args.results.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
