"""Exact (batched torch matmul) vs FAISS top-K search, as the commands run them (fusionrec.retrieval.ExactSearch /
FaissSearch, with each user's history excluded), on random L2-normalised vectors.

    python bench/bench_faiss.py [--movies 10000 100000] [--users 2000] [--dim 128] [--factory Flat HNSW32]
        [--output bench/results/faiss.json]

Prints queries per second and recall@K against exact search for each catalog size and index.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusionrec.evaluation import recall_vs_exact  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from fusionrec.retrieval import ExactSearch, FaissSearch  # noqa: E402


def run(
    movies: int, users: int, dim: int, factories: list[str], k: int, history: int, batch: int, seed: int, params: str | None
) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    movie_vectors = torch.nn.functional.normalize(torch.randn(movies, dim, generator=generator), dim=-1)
    user_vectors = torch.nn.functional.normalize(torch.randn(users, dim, generator=generator), dim=-1)
    rng = np.random.default_rng(seed)
    exclude = [rng.choice(movies, size=min(history, movies), replace=False) for _ in range(users)]

    def timed(search) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        found = [search.search(user_vectors[s : s + batch], exclude[s : s + batch], k)[0] for s in range(0, users, batch)]
        return np.concatenate(found), time.perf_counter() - started

    rows = []
    exact, seconds = timed(ExactSearch(movie_vectors))
    rows.append({"movies": movies, "index": "exact", "build_s": 0.0, "queries_per_s": users / seconds, f"recall@{k}": 1.0})
    for factory in factories:
        started = time.perf_counter()
        search = FaissSearch(movie_vectors, factory=factory, params=params if factory != "Flat" else None)
        build = time.perf_counter() - started
        found, seconds = timed(search)
        recall = recall_vs_exact(found, exact, [k])[f"faiss_recall_vs_exact@{k}"]
        rows.append(
            {"movies": movies, "index": f"faiss:{factory}", "build_s": build, "queries_per_s": users / seconds, f"recall@{k}": recall}
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--factory", nargs="+", default=["Flat", "HNSW32"])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--history", type=int, default=100, help="movies excluded per user")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="efSearch=256", help="faiss search parameters for non-Flat indexes")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for movies in args.movies:
        rows += run(movies, args.users, args.dim, args.factory, args.k, args.history, args.batch_size, args.seed, args.params)
    print(f"{'movies':>8}  {'index':<14}  {'build s':>8}  {'queries/s':>10}  recall@{args.k}")
    for row in rows:
        print(
            f"{row['movies']:>8,}  {row['index']:<14}  {row['build_s']:>8.2f}  {row['queries_per_s']:>10,.0f}  "
            f"{row[f'recall@{args.k}']:.4f}"
        )
    if args.output:
        atomic_write_text(args.output, json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
