"""Full-ranking evaluation of a FusionModel on a prepared dataset (../shared/PROTOCOL.md).

    python evaluate_fusionrec.py --model DIR_OR_ID --dataset DIR --split leave_one_out temporal cold_items \
        [--stage test|validation] [--k 10 20] [--output results.json] [--index exact|faiss]

Every example ranks the whole catalog (cold_items: the held-out movies only) with the user's whole history at that
point excluded; Recall/NDCG/MRR/coverage@K and the rating head's RMSE are computed by the `evaluate` module in
fusionrec/metrics/fusionrec_metrics up to 100,000 examples per split and by its numpy functions above (the same
numbers; the module turns every ranked list into Python objects: 89 s and 5.7 GB at 2.65M examples); --metrics-backend
evaluate or numpy picks one for every split. With
--index faiss the top K comes from a FAISS inner-product index and its recall against exact search is reported as
`faiss_recall_vs_exact@K` (1.0 for the default "Flat" index, below 1 for approximate factories such as HNSW32).

Training's validation uses `rank_examples` and `evaluate_split` from here.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusionrec.cli import add_precision_option, autocast, open_session, resolve_device, run_command
from fusionrec.data.catalog import MovieCatalog
from fusionrec.data.sequences import SPLITS, EvaluationExamples, evaluation_examples
from fusionrec.errors import CommandError
from fusionrec.io import atomic_write_text, check_writable
from fusionrec.metrics.fusionrec_metrics import ranking_metrics, rating_rmse
from fusionrec.parallel import check_processes, run_forked
from fusionrec.retrieval import ExactSearch, catalog_vectors, make_search, prefix_user_vectors

METRICS_MODULE = Path(__file__).resolve().parent / "metrics" / "fusionrec_metrics"
EVALUATE_MODULE_MAX_EXAMPLES = 100_000  # "auto": beyond this the numpy functions (same numbers, ~25x faster)


@torch.no_grad()
def rank_examples(
    model,
    examples: EvaluationExamples,
    movie_vectors: torch.Tensor,
    *,
    k: int,
    batch_size: int = 256,
    search=None,
    return_user_vectors: bool = False,
    query_at_target: bool = False,
    processes: int = 1,
    show_progress: bool = False,
):
    """Top-k movie indices per example (-1 pads; every movie rated before the target excluded, candidates
    restricted by the split) and the rating head's prediction of each target. The user vector is read as of the
    user's last known event (PROTOCOL.md); `query_at_target` reads it as of the target's own time instead, a variant
    that knows the gap to the event it predicts. `search` is an ExactSearch (default) or FaissSearch over
    `movie_vectors`; `return_user_vectors` adds the user vectors. Batch by batch: histories and exclusions are cut
    from the rows as needed, and only (examples, k) indices are kept, never an examples x movies matrix.
    `processes` > 1 ranks the batches in that many forked CPU processes (`run_forked`): the same batches, so the
    same results."""
    model.eval()
    if search is None:
        search = ExactSearch(movie_vectors, examples.candidate_mask)
    count, dim = len(examples), movie_vectors.shape[1]
    ranked = torch.full((count, k), -1, dtype=torch.long)
    predicted = torch.zeros(count, dtype=torch.float32)
    users_out = torch.zeros((count, dim) if return_user_vectors else (0, dim), dtype=torch.float32)
    if processes > 1:
        for tensor in (ranked, predicted, users_out):
            tensor.share_memory_()
    histories = examples.history_windows()

    @torch.no_grad()
    def rank_batch(number: int) -> int:
        part = slice(number * batch_size, min((number + 1) * batch_size, count))
        users = prefix_user_vectors(
            model,
            histories.subset(part),
            movie_vectors,
            as_of=examples.target_timestamps[part] if query_at_target else None,
            batch_size=batch_size,
        )
        if isinstance(search, ExactSearch):
            indices, _ = search.search_pairs(users, examples.exclusion_pairs(part), k)
        else:
            indices, _ = search.search(users, examples.exclusions(part), k)
        ranked[part] = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        targets = torch.from_numpy(examples.targets[part]).to(movie_vectors.device)
        predicted[part] = model.predict_rating(users, movie_vectors[targets]).float().cpu()
        if return_user_vectors:
            users_out[part] = users.float().cpu()
        return 1

    run_forked(rank_batch, -(-count // batch_size), processes=processes, desc="ranking", unit="batch",
               show_progress=show_progress)  # fmt: skip
    if return_user_vectors:
        return ranked.numpy(), predicted.numpy(), users_out.to(movie_vectors.device)
    return ranked.numpy(), predicted.numpy()


def candidate_positions(ranked: np.ndarray, targets: np.ndarray, candidate_mask: np.ndarray | None, num_movies: int):
    """Re-index movies to 0..num_candidates-1 when a split ranks among a subset (cold_items), so coverage@K is the
    share of the candidates shown; hit metrics do not change."""
    if candidate_mask is None:
        return ranked, targets, num_movies
    candidates = np.flatnonzero(candidate_mask)
    position = np.full(num_movies, -1, dtype=np.int64)
    position[candidates] = np.arange(len(candidates))
    ranked = np.where(ranked >= 0, position[np.clip(ranked, 0, None)], -1)
    return ranked, position[targets], len(candidates)


def compute_metrics(
    ranked: np.ndarray,
    predicted: np.ndarray,
    examples: EvaluationExamples,
    *,
    num_movies: int,
    k_values: Sequence[int] = (10, 20),
    backend: str = "numpy",
) -> dict[str, float]:
    """PROTOCOL metrics of ranked lists: numpy functions (`backend="numpy"`), the loaded `evaluate` module, or "auto"
    (`resolve_metrics_backend`)."""
    ranked, targets, num_candidates = candidate_positions(ranked, examples.targets, examples.candidate_mask, num_movies)
    backend = resolve_metrics_backend(backend, len(examples))
    if backend == "evaluate":
        ranking, rmse = load_evaluate_metrics()
        metrics = ranking.compute(
            predictions=[row for row in ranked], references=targets, k_values=tuple(k_values), num_movies=num_candidates
        )
        if len(examples):
            metrics.update(rmse.compute(predictions=predicted, references=examples.target_ratings))
    elif backend == "numpy":
        metrics = ranking_metrics(ranked, targets, k_values=k_values, num_movies=num_candidates)
        if len(examples):
            metrics["rmse"] = rating_rmse(predicted, examples.target_ratings)
    else:
        raise CommandError(f"unknown metrics backend {backend!r}; choose auto, evaluate or numpy.")
    return metrics


def resolve_metrics_backend(backend: str, num_examples: int) -> str:
    """"auto" is the `evaluate` module up to EVALUATE_MODULE_MAX_EXAMPLES examples, the numpy functions beyond."""
    if backend != "auto":
        return backend
    return "evaluate" if num_examples <= EVALUATE_MODULE_MAX_EXAMPLES else "numpy"


_EVALUATE_MODULES: tuple | None = None


def load_evaluate_metrics():
    """The ranking and rmse configurations of metrics/fusionrec_metrics via `evaluate.load` (offline, loaded once)."""
    global _EVALUATE_MODULES
    if _EVALUATE_MODULES is None:
        import evaluate

        _EVALUATE_MODULES = (evaluate.load(str(METRICS_MODULE)), evaluate.load(str(METRICS_MODULE), "rmse"))
    return _EVALUATE_MODULES


def evaluate_split(
    model,
    catalog: MovieCatalog,
    examples: EvaluationExamples,
    *,
    k_values: tuple[int, ...] = (10, 20),
    movie_vectors: torch.Tensor | None = None,
    batch_size: int = 256,
    search=None,
    backend: str = "numpy",
) -> dict[str, float]:
    """Recall/NDCG/MRR/coverage@K over the full catalog (or the split's candidates) and RMSE of the rating head."""
    if movie_vectors is None:
        movie_vectors = catalog_vectors(model, catalog)
    ranked, predicted = rank_examples(
        model, examples, movie_vectors, k=max(k_values), batch_size=batch_size, search=search
    )
    return compute_metrics(ranked, predicted, examples, num_movies=len(catalog), k_values=k_values, backend=backend)


def recall_vs_exact(approximate: np.ndarray, exact: np.ndarray, k_values: Sequence[int]) -> dict[str, float]:
    """Mean share of the exact top K that the approximate top K also returns."""
    result = {}
    for k in k_values:
        shares = []
        for fast, true in zip(approximate[:, :k], exact[:, :k], strict=True):
            wanted = true[true >= 0]
            if len(wanted):
                shares.append(np.isin(wanted, fast).mean())
        result[f"faiss_recall_vs_exact@{k}"] = float(np.mean(shares)) if shares else 1.0
    return result


# ----- the command -----

TABLE_ORDER = ("recall", "ndcg", "mrr", "coverage")


def format_table(results: dict[str, dict], k_values: Sequence[int]) -> str:
    """Metric rows x split columns."""
    splits = list(results)
    names = ["examples"] + [f"{m}@{k}" for k in k_values for m in TABLE_ORDER] + ["rmse"]
    extra = sorted({key for r in results.values() for key in r if key.startswith("faiss_recall_vs_exact")})
    names += extra
    width = max(len(n) for n in names)
    columns = [max(len(s), 10) for s in splits]
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>{w}}" for s, w in zip(splits, columns, strict=True))]
    for name in names:
        cells = []
        for split, w in zip(splits, columns, strict=True):
            value = results[split].get("num_examples" if name == "examples" else name)
            if value is None:
                cells.append(f"{'-':>{w}}")
            elif name == "examples":
                cells.append(f"{int(value):>{w},}")
            else:
                cells.append(f"{value:>{w}.4f}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def evaluate_splits(
    model,
    rows: Sequence[dict],
    *,
    cold_items: np.ndarray,
    movie_vectors: torch.Tensor,
    splits: Sequence[str],
    stage: str = "test",
    k_values: Sequence[int] = (10, 20),
    index: str = "exact",
    faiss_factory: str = "Flat",
    faiss_params: str | None = None,
    batch_size: int = 256,
    metrics_backend: str = "numpy",
    recall_sample: int = 2000,
    processes: int = 1,
    show_progress: bool = False,
) -> dict:
    """Every requested split of a dataset's sequences (`rows`, its `cold_item` flags) evaluated on one set of movie
    vectors: a session's, or those a released model carries."""
    num_movies = len(movie_vectors)
    results = {}
    k_values = tuple(k_values)
    for split in splits:
        started = time.perf_counter()
        examples = evaluation_examples(rows, split, stage, cold_items)
        search = make_search(index, movie_vectors, examples.candidate_mask, faiss_factory=faiss_factory,
                             faiss_params=faiss_params)
        ranked, predicted, *users = rank_examples(
            model, examples, movie_vectors, k=max(k_values), batch_size=batch_size, search=search,
            return_user_vectors=index == "faiss", processes=processes, show_progress=show_progress,
        )
        metrics = compute_metrics(
            ranked, predicted, examples, num_movies=num_movies, k_values=k_values, backend=metrics_backend
        )
        metrics["num_examples"] = len(examples)
        metrics["metrics_backend"] = resolve_metrics_backend(metrics_backend, len(examples))
        metrics["num_candidates"] = num_movies if examples.candidate_mask is None else int(examples.candidate_mask.sum())
        if index == "faiss":
            metrics.update(faiss_recall(examples, ranked, users[0], movie_vectors, k_values, batch_size=batch_size,
                                        recall_sample=recall_sample))
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        results[split] = metrics
    return results


def faiss_recall(examples, ranked, users, movie_vectors, k_values, *, batch_size: int, recall_sample: int) -> dict:
    """FAISS top K against exact search on (a seeded sample of at most `recall_sample`) examples."""
    count = len(examples)
    rows = np.arange(count)
    if count > recall_sample:
        rows = np.sort(np.random.default_rng(0).choice(count, recall_sample, replace=False))
    exact = ExactSearch(movie_vectors, examples.candidate_mask)
    reference = [
        exact.search(users[torch.from_numpy(rows[s : s + batch_size])],
                     [examples.exclusions(slice(i, i + 1))[0] for i in rows[s : s + batch_size]], max(k_values))[0]
        for s in range(0, len(rows), batch_size)
    ]  # fmt: skip
    reference = np.concatenate(reference) if reference else np.zeros((0, max(k_values)), np.int64)
    result = recall_vs_exact(ranked[rows], reference, k_values)
    result["faiss_recall_examples"] = len(rows)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a fusionrec model on a prepared dataset with the full-ranking protocol (PROTOCOL.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="folder written by save_pretrained, or a Hub id")
    parser.add_argument("--dataset", required=True, help="prepared dataset folder (prepare_dataset.py)")
    parser.add_argument(
        "--split", nargs="+", default=["leave_one_out"], choices=(*SPLITS, "all"), help="split(s) to evaluate"
    )
    parser.add_argument("--stage", choices=("test", "validation"), default="test")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20], help="cut-offs K")
    parser.add_argument("--output", type=Path, help="write the results as JSON here (atomically)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--index", choices=("exact", "faiss"), default="exact", help="top-K search")
    parser.add_argument("--faiss-factory", default="Flat", help="faiss.index_factory string (inner product)")
    parser.add_argument("--faiss-params", help='faiss search parameters, e.g. "efSearch=256" for HNSW')
    parser.add_argument("--recall-sample", type=int, default=2000, help="examples checked against exact search")
    parser.add_argument(
        "--metrics-backend", choices=("auto", "evaluate", "numpy"), default="auto",
        help="auto: the evaluate module up to 100,000 examples per split, its numpy functions (same numbers) above",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument(
        "--processes", type=int, default=1,
        help="CPU processes that rank users in parallel, sharing the model and data (fork), one thread each: "
        "on CPU, one per core is fastest",
    )  # fmt: skip
    add_precision_option(parser)
    parser.add_argument("--cache-dir", type=Path, help="text-cache root (default ~/.cache/fusionrec/text)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "all" in args.split:
        args.split = list(SPLITS)
    args.split = list(dict.fromkeys(args.split))

    def body() -> int:
        if any(k <= 0 for k in args.k) or args.batch_size <= 0:
            raise CommandError("--k and --batch-size must be positive integers.")
        check_processes(args.processes, resolve_device(args.device))
        if args.processes > 1 and args.index != "exact":
            raise CommandError("--processes > 1 needs --index exact.")
        if args.output is not None:
            if args.output.is_dir():
                raise CommandError(f"--output {args.output} is a folder; give a file name such as results.json.")
            check_writable(args.output.absolute().parent)  # fail now, not after the evaluation
        started = time.perf_counter()
        session = open_session(
            args.model, args.dataset, device=args.device, cache_dir=args.cache_dir,
            batch_size=max(args.batch_size, 512), show_progress=not args.no_progress,
        )
        results = {}
        for split in args.split:  # each split ranks the catalog as it may see it (MovieCatalog.for_split)
            with autocast(session.model, args.mixed_precision):
                results |= evaluate_splits(
                    session.model, session.rows, cold_items=session.catalog.cold_item.numpy(),
                    movie_vectors=session.movie_vectors(split), splits=[split], stage=args.stage, k_values=args.k,
                    index=args.index, faiss_factory=args.faiss_factory, faiss_params=args.faiss_params,
                    batch_size=args.batch_size, metrics_backend=args.metrics_backend, recall_sample=args.recall_sample,
                    processes=args.processes, show_progress=not args.no_progress,
                )
        report = {
            "model": str(args.model),
            "dataset": str(args.dataset),
            "stage": args.stage,
            "k_values": list(args.k),
            "index": args.index if args.index == "exact" else f"faiss:{args.faiss_factory}",
            "metrics_backend": args.metrics_backend,
            "protocol": "full ranking over the catalog (cold_items: the held-out movies), history excluded; PROTOCOL.md",
            "num_movies": len(session.catalog),
            "splits": results,
            "seconds": round(time.perf_counter() - started, 3),
        }
        print(f"{args.model} on {args.dataset} ({args.stage}, {report['index']} search)")
        print(format_table(results, args.k))
        if args.output:
            atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.output}")
        return 0

    return run_command(body)
