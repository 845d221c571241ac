"""The quality benchmark's report: per-example metrics from stored target ranks, the test table, the head/tail table
and the four targets (issue 12), each ratio with a paired-bootstrap 95% interval over the test users.

It reads records (bench_quality.py's JSON, one per model/split/seed) and a Context (the tail mask from the training
counts, the number of cold movies), nothing else: `bench_quality.py --reuse bench/results/quality.json` re-makes a
report from stored records without training anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from quality_jobs import (
    BASELINES,
    CONTENT_FREE,
    FUSION_VARIANTS,
    PEER_SETTINGS,
    RANK_DEPTH,
    TARGET_TIME,
    ndcg_per_example,
    recall_per_example,
)

MODELS = (*BASELINES, *FUSION_VARIANTS, TARGET_TIME, *PEER_SETTINGS)
TAIL_MAX_TRAIN_RATINGS = 30  # a test target is "tail" when its movie has at most this many training ratings
TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "coverage@10", "rmse")
PEER_COLD_NOTE = ("peers ({}) are not run on cold_items: RecTools scores only movies seen in training, so a peer is "
                  "chance there by construction (NDCG@10 {:.4f} among {} cold movies); they count as content-free")


# ----- numbers -----


def chance_ndcg(num_candidates: int, k: int = 10) -> float:
    """Expected NDCG@k of a random order of `num_candidates` movies with one relevant."""
    return sum(1.0 / np.log2(rank + 1) for rank in range(1, min(k, num_candidates) + 1)) / max(num_candidates, 1)


def paired_bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, *, samples: int = 10_000, seed: int = 0):
    """95% interval of mean(numerator) / mean(denominator) over resamples of the same examples for both (drawn in
    chunks: cold_items has ~8,000 test events, and 10,000 resamples of them at once would take gigabytes)."""
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, samples, chunk := max(1, 2_000_000 // max(len(numerator), 1))):
        picks = rng.integers(0, len(numerator), size=(min(chunk, samples - start), len(numerator)))
        ratios.append(numerator[picks].mean(axis=1) / np.maximum(denominator[picks].mean(axis=1), 1e-12))
    low, high = np.percentile(np.concatenate(ratios), [2.5, 97.5])
    return float(low), float(high)


def tail_mask(train_counts: np.ndarray, targets: np.ndarray, *, max_ratings: int = TAIL_MAX_TRAIN_RATINGS) -> np.ndarray:
    """True where a test target's movie has at most `max_ratings` training ratings (the long tail)."""
    return np.asarray(train_counts)[np.asarray(targets, dtype=np.int64)] <= max_ratings


def cpu_to_reach(curve, threshold: float) -> float | None:
    """CPU-seconds at the first validation point of `curve` [(cpu_seconds, ndcg@10), ...] with ndcg@10 >= threshold;
    None if the curve never gets there."""
    return next((float(cpu) for cpu, value in curve if value >= threshold), None)


def cpu_at_best(curve) -> float | None:
    """CPU-seconds at the curve's best (first maximum) validation point."""
    if not curve:
        return None
    return float(max(curve, key=lambda point: (point[1], -point[0]))[0])


# ----- reading records -----


@dataclass(frozen=True)
class Context:
    """What the report needs beside the records: the split's test targets and training counts."""

    splits: tuple[str, ...]
    tail: np.ndarray | None  # leave_one_out test examples in the tail (None: leave_one_out not run)
    num_cold_candidates: int | None = None


def runs(records: list[dict], model: str, split: str) -> list[dict]:
    return sorted((r for r in records if r["model"] == model and r["split"] == split), key=lambda r: r["seed"])


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the min-max range (the table's `mean ± half range over seeds`)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def per_example(records: list[dict], model: str, split: str, fn: Callable, mask: np.ndarray | None = None):
    """fn(test ranks) per example, averaged over the model's seeds and restricted to `mask`; None if not run."""
    ranks = [r["test_target_ranks"] for r in runs(records, model, split)]
    if not ranks or len({len(r) for r in ranks}) != 1:
        return None
    values = np.mean([fn(r) for r in ranks], axis=0)
    return values if mask is None else values[mask]


def best_validation(record: dict) -> float | None:
    curve = record.get("validation_curve") or []
    return max(value for _, value in curve) if curve else record.get("validation", {}).get("ndcg@10")


# ----- tables -----


def cell(values: list[float], digits: int = 4, width: int = 17) -> str:
    if not values:
        return f"{'-':>{width}}"
    mean, half = spread(values)
    text = f"{mean:.{digits}f} ± {half:.{digits}f}" if digits else f"{mean:.0f} ± {half:.0f}"
    return f"{text:>{width}}"


def test_table(records: list[dict], context: Context) -> str:
    columns = [*TABLE_METRICS, "valid ndcg@10", "train CPU-s"]
    header = f"{'model':<24} {'split':<14} " + " ".join(f"{name:>17}" for name in columns)
    lines = [header, "-" * len(header)]
    for split in context.splits:
        for model in MODELS:
            found = runs(records, model, split)
            if not found:
                continue
            cells = [cell([r["metrics"][m] for r in found if isinstance(r["metrics"].get(m), float)]) for m in TABLE_METRICS]
            cells.append(cell([v for v in map(best_validation, found) if v is not None]))
            cells.append(cell([r["train_cpu_seconds"] for r in found if r.get("train_cpu_seconds") is not None], 0))
            lines.append(f"{model:<24} {split:<14} " + " ".join(cells))
        if split == "cold_items" and PEER_SETTINGS and context.num_cold_candidates:
            lines.append("  " + PEER_COLD_NOTE.format(", ".join(PEER_SETTINGS), chance_ndcg(context.num_cold_candidates),
                                                       context.num_cold_candidates))
    return "\n".join(lines)


def head_tail_table(records: list[dict], tail: np.ndarray) -> str:
    """Recall@100 and NDCG@100 on the tail and the head of leave_one_out's test targets, for every model."""
    columns = ("recall@100", "head recall@100", "head ndcg@100", "tail recall@100", "tail ndcg@100")
    header = f"{'model':<24} " + " ".join(f"{name:>17}" for name in columns)
    lines = [
        f"leave_one_out head/tail: tail = test targets whose movie has <= {TAIL_MAX_TRAIN_RATINGS} training ratings "
        f"(training events of the split): {int(tail.sum())} of {len(tail)} test users "
        f"(tail share {tail.mean():.1%}); head = the rest. Mean ± half range over seeds.",
        header,
        "-" * len(header),
    ]
    for model in MODELS:
        found = [r for r in runs(records, model, "leave_one_out") if len(r["test_target_ranks"]) == len(tail)]
        if not found:
            continue
        cells = []
        for mask, fn in ((None, recall_per_example), (~tail, recall_per_example), (~tail, ndcg_per_example),
                         (tail, recall_per_example), (tail, ndcg_per_example)):
            values = [fn(r["test_target_ranks"], RANK_DEPTH) for r in found]
            cells.append(cell([float(v.mean() if mask is None else v[mask].mean()) for v in values]))
        lines.append(f"{model:<24} " + " ".join(cells))
    return "\n".join(lines)


# ----- targets -----


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def compare(records, split: str, model: str, other: str, fn: Callable, mask=None) -> tuple[float, str]:
    """(ratio of means, 'x1.23 [95% CI 1.01-1.50]') of `model` against `other`; the interval is a paired bootstrap
    over the test users (the same users rank under both models)."""
    ours, theirs = per_example(records, model, split, fn, mask), per_example(records, other, split, fn, mask)
    if ours is None or theirs is None or len(ours) != len(theirs):
        return float("nan"), "(no per-example ranks)"
    value = ratio(ours.mean(), theirs.mean())
    if not len(ours):
        return value, f"x{value:.2f}"
    low, high = paired_bootstrap_ratio(ours, theirs)
    return value, f"x{value:.2f} [95% CI {low:.2f}-{high:.2f}]"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def means(records, models: Iterable[str], split: str, fn: Callable, mask=None) -> dict[str, float]:
    """Mean over seeds and examples of fn(ranks), per model that was run."""
    values = {model: per_example(records, model, split, fn, mask) for model in models}
    return {model: float(v.mean()) for model, v in values.items() if v is not None and len(v)}


def ndcg10(ranks) -> np.ndarray:
    return ndcg_per_example(ranks, 10)


def recall100(ranks) -> np.ndarray:
    return recall_per_example(ranks, RANK_DEPTH)


def target_t1(records) -> list[str]:
    split = "leave_one_out"
    full = means(records, ["fusion_full"], split, ndcg10).get("fusion_full")
    peers = means(records, PEER_SETTINGS, split, ndcg10)
    if full is None or not peers:
        return ["T1 leave_one_out test NDCG@10 >= 1.10 x the best peer: not run (needs fusion_full and a peer)"]
    best = max(peers, key=peers.get)
    value, text = compare(records, split, "fusion_full", best, ndcg10)
    lines = [f"T1 leave_one_out test NDCG@10: fusion_full {full:.4f} vs best peer {best} {peers[best]:.4f} -> {text} "
             f"(need >= 1.10): {verdict(value >= 1.10)}"]
    others = means(records, [m for m in MODELS if m != "fusion_full"], split, ndcg10)
    for model, mean in sorted(others.items(), key=lambda item: -item[1]):
        lines.append(f"    for information: fusion_full vs {model:<24} {mean:.4f}: "
                     f"{compare(records, split, 'fusion_full', model, ndcg10)[1]}")
    return lines


def target_t2(records) -> list[str]:
    """Time to quality: fusion_full's training CPU-seconds to first reach the best peer's validation NDCG@10."""
    split = "leave_one_out"
    peers = {name: runs(records, name, split) for name in PEER_SETTINGS}
    peers = {name: found for name, found in peers.items() if found and all(best_validation(r) is not None for r in found)}
    full = runs(records, "fusion_full", split)
    if not peers or not full:
        return ["T2 time to quality: not run (needs fusion_full and a peer on leave_one_out)"]
    best_valid = {name: statistics.fmean(best_validation(r) for r in found) for name, found in peers.items()}
    best = max(best_valid, key=best_valid.get)
    target, budget = best_valid[best], statistics.fmean(r["train_cpu_seconds"] for r in peers[best])
    reached = {r["seed"]: cpu_to_reach(r.get("validation_curve") or [], target) for r in full}
    head = (f"T2 time to quality: best peer by validation {best}: best validation NDCG@10 V={target:.4f} (mean over "
            f"seeds), training C={budget:.0f} CPU-s (mean, to early stop)")
    missed = [seed for seed, cpu in reached.items() if cpu is None]
    if missed:
        bests = ", ".join(f"seed {r['seed']} best {best_validation(r) or 0:.4f}" for r in full)
        return [f"{head}; fusion_full never reaches V in seed(s) {missed} ({bests}): FAIL"]
    spent = statistics.fmean(reached.values())
    seeds = ", ".join(f"{cpu:.0f}" for cpu in reached.values())
    lines = [f"{head}; fusion_full first reaches V at {spent:.0f} CPU-s (seeds: {seeds}) -> {spent / budget:.2f} x C "
             f"(need <= 0.50): {verdict(spent <= 0.5 * budget)}"]
    to_best = [cpu_at_best(r.get("validation_curve") or []) for r in peers[best]]
    if all(cpu is not None for cpu in to_best):
        own = statistics.fmean(to_best)
        lines.append(f"    for information: {best} reached its own best epoch at {own:.0f} CPU-s (mean); fusion_full's "
                     f"time to V is {ratio(spent, own):.2f} x that")
    lines.append("    (CPU-seconds of the training process, validation included: fusion_full's curve point is read "
                 "before that validation runs, a peer's after it; C is the peer's whole fit, to its early stop; the "
                 "text cache is its own line above)")
    return lines


def target_t3(records, context: Context) -> list[str]:
    split = "cold_items"
    full = means(records, ["fusion_full"], split, ndcg10).get("fusion_full")
    free = means(records, CONTENT_FREE, split, ndcg10)
    if full is None or not free:
        return ["T3 cold_items NDCG@10 >= 2 x the best content-free model: not run (needs fusion_full and one of "
                f"{', '.join(CONTENT_FREE)} on cold_items)"]
    best = max(free, key=free.get)
    value, text = compare(records, split, "fusion_full", best, ndcg10)
    lines = [f"T3 cold_items NDCG@10: fusion_full {full:.4f} vs best content-free {best} {free[best]:.4f} -> {text} "
             f"(need >= 2): {verdict(value >= 2.0)}"]
    if context.num_cold_candidates:
        lines.append(f"    the peers count as content-free and are not run there: chance by construction, NDCG@10 "
                     f"{chance_ndcg(context.num_cold_candidates):.4f}")
    for model, mean in means(records, ("most_voted_tmdb", "fusion_content", TARGET_TIME), split, ndcg10).items():
        lines.append(f"    for information (uses content or the target's time, not part of T3): {model} {mean:.4f} = "
                     f"x{ratio(mean, free[best]):.2f} the best content-free model")
    return lines


def target_t4(records, context: Context) -> list[str]:
    """The long tail: fusion_full >= 1.2 x fusion_ids and the best peer on the tail, at least level on the head."""
    split = "leave_one_out"
    if context.tail is None:
        return ["T4 long tail: not run (needs leave_one_out)"]
    checks, lines = [], []
    for part, mask, need in (("tail", context.tail, 1.2), ("head", ~context.tail, 1.0)):
        full = means(records, ["fusion_full"], split, recall100, mask).get("fusion_full")
        peers = means(records, PEER_SETTINGS, split, recall100, mask)
        others = means(records, ["fusion_ids"], split, recall100, mask)
        if peers:
            best = max(peers, key=peers.get)
            others[best] = peers[best]
        if full is None or "fusion_ids" not in others or not peers:
            checks.append(None)
            lines.append(f"    {part} Recall@100: not run (needs fusion_full, fusion_ids and a peer)")
            continue
        for other, mean in others.items():
            label = "fusion_ids" if other == "fusion_ids" else f"best peer by {part} Recall@100 {other}"
            value, text = compare(records, split, "fusion_full", other, recall100, mask)
            checks.append(value >= need)
            lines.append(f"    {part} Recall@100: fusion_full {full:.4f} vs {label} {mean:.4f} -> {text} "
                         f"(need >= {need:.2f}): {verdict(value >= need)}")
    head = (f"T4 long tail, leave_one_out (tail: target movie with <= {TAIL_MAX_TRAIN_RATINGS} training ratings, "
            f"{int(context.tail.sum())} of {len(context.tail)} test users): "
            + ("not run" if None in checks else verdict(all(checks))))
    return [head, *lines]


def target_lines(records: list[dict], context: Context) -> list[str]:
    return [*target_t1(records), *target_t2(records), *target_t3(records, context), *target_t4(records, context),
            "(PASS/FAIL on the point estimate: means over seeds; [95% CI] = paired bootstrap over test users of the "
            "per-user values averaged over seeds)"]
