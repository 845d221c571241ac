"""A bounded local load test of what a release serves: handler.py (Inference Endpoints) called in-process, and the
Space's app.py launched on 127.0.0.1 and called through gradio_client, on a release folder of the real sample;
beside them, exact top-k over the catalog alone (one user vector against the catalog matrix: the floor).

Every request is a typed history of 5-20 catalog titles with ratings (seeded), top_k 10; a fixed number of requests
per row, loopback only. Rows: p50 / p99 latency (ms) and requests/s.

    python release.py --model OUT/best --dataset DATA --repo you/fusionrec-tmdb --dry-run --output-dir REL
    python bench/bench_serving.py --release REL [--requests 200] [--app-requests 100] [--clients 4]

Writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "fusionrec" / "serving"))
sys.path.insert(0, str(BENCH))

from bench_vs_original import machine_records  # noqa: E402


def histories(labels: list[str], count: int, *, seed: int = 0) -> list[list]:
    generator = random.Random(seed)
    return [
        [[title, generator.choice([3.0, 3.5, 4.0, 4.5, 5.0])] for title in generator.sample(labels, generator.randint(5, 20))]
        for _ in range(count)
    ]


def unique_labels(catalog) -> list[str]:
    """"Title (year)" of every movie that label names alone (a person types what the page shows)."""
    labels = []
    for index in range(len(catalog)):
        try:
            if catalog.resolve(catalog.label(index)) == index:
                labels.append(catalog.label(index))
        except ValueError:
            continue
    return labels


def timed(calls: list[Callable[[], object]], *, clients: int = 1) -> dict:
    """Latency of each call (ms) and the throughput of running them all with `clients` at a time."""
    def one(call):
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, calls))
    wall = time.perf_counter() - started
    return {"requests": len(calls), "clients": clients, "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
            "requests_per_s": len(calls) / wall}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="a release folder (release.py --dry-run)")
    parser.add_argument("--requests", type=int, default=200, help="requests per handler row")
    parser.add_argument("--app-requests", type=int, default=100, help="requests per app row")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the concurrent app row")
    parser.add_argument("--output", default=str(BENCH / "results" / "serving.json"))
    args = parser.parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import torch
    from app import build_demo
    from gradio_client import Client
    from handler import EndpointHandler

    handler = EndpointHandler(args.release)
    model, catalog = handler.model, handler.model.movie_catalog()
    labels = unique_labels(catalog)
    asked = histories(labels, max(args.requests, args.app_requests) + 10)
    for history in asked[-10:]:  # warm-up
        handler({"inputs": history, "parameters": {"top_k": 10, "explain": True}})
    rows = {}
    vectors = catalog.vectors
    users = torch.nn.functional.normalize(torch.randn(args.requests, vectors.shape[1]), dim=-1)
    rows["exact top-10 over the catalog alone (user vector @ catalog, topk)"] = timed(
        [lambda user=user: (vectors @ user).topk(10) for user in users]
    )
    for explain in (False, True):
        rows[f"handler, explain={str(explain).lower()}"] = timed(
            [lambda h=h, e=explain: handler({"inputs": h, "parameters": {"top_k": 10, "explain": e}})
             for h in asked[: args.requests]]
        )  # fmt: skip
    demo = build_demo(args.release)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        lines = ["\n".join(f"{title} = {rating:g}" for title, rating in history) for history in asked[: args.app_requests]]
        client = Client(url, verbose=False)
        client.predict(lines[0], 10, api_name="/recommend")
        rows["app via gradio_client (explain), 1 client"] = timed(
            [lambda text=text: client.predict(text, 10, api_name="/recommend") for text in lines]
        )
        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        rows[f"app via gradio_client (explain), {args.clients} clients"] = timed(
            [lambda i=i, text=text: clients[i % args.clients].predict(text, 10, api_name="/recommend")
             for i, text in enumerate(lines)], clients=args.clients,
        )  # fmt: skip
    finally:
        demo.close()
    print(f"release {args.release}: {len(catalog):,} movies, {model.config.hidden_size}-d vectors, "
          f"window {model.config.max_history_length}; torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| path | requests | clients | p50 ms | p99 ms | requests/s |\n|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['requests']} | {row['clients']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['requests_per_s']:.1f} |")  # fmt: skip
    Path(args.output).write_text(json.dumps({"rows": rows, "machine": machine_records(),
                                             "catalog_movies": len(catalog)}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
