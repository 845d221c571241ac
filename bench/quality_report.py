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
POST_RELEASE_LABEL = "[uses post-release data]"
SNAPSHOT_LABEL = f"fusion_full with the held-out movies' votes, popularity and revenue {POST_RELEASE_LABEL}"
PEER_COLD_NOTE = ("peers ({}) are not run on cold_items: RecTools scores only movies seen in training, so a peer is "
                  "chance there by construction (NDCG@10 {:.4f} among {} cold movies); they count as content-free")


# ----- numbers -----


def chance_ndcg(num_candidates: int, k: int = 10) -> float:
    """Expected NDCG@k of a random order of `num_candidates` movies with one relevant."""
    return sum(1.0 / np.log2(rank + 1) for rank in range(1, min(k, num_candidates) + 1)) / max(num_candidates, 1)


def bootstrap_ratio(ours: np.ndarray, theirs: np.ndarray, *, clusters: np.ndarray | None = None,
                    samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(ours) / mean(theirs) for per-example values shaped (seeds, examples), one row per seed.
    Each resample draws users with replacement (a user's examples move together: `clusters` names each example's
    user; None, one example per user) and, for each model on its own, its seeds with replacement, so the interval
    carries the seed-to-seed spread as well as the users'. Both models see the same users in each resample."""
    ours, theirs = np.atleast_2d(ours), np.atleast_2d(theirs)
    groups = np.arange(ours.shape[1]) if clusters is None else np.unique(clusters, return_inverse=True)[1]
    count = int(groups.max()) + 1 if len(groups) else 0
    by_user = [np.stack([np.bincount(groups, weights=row, minlength=count) for row in values]) for values in (ours, theirs)]
    rng = np.random.default_rng(seed)
    ratios = []
    chunk = max(1, 4_000_000 // max(count * (len(ours) + len(theirs)), 1))
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        users = rng.integers(0, count, size=(size, count))
        totals = []
        for sums in by_user:  # (seeds, users) -> each resample's total, over its own draw of seeds
            per_seed = sums[:, users].sum(axis=-1)  # (seeds, size)
            drawn = rng.integers(0, len(sums), size=(size, len(sums)))
            totals.append(per_seed[drawn, np.arange(size)[:, None]].mean(axis=1))
        ratios.append(totals[0] / np.maximum(totals[1], 1e-12))
    low, high = np.percentile(np.concatenate(ratios), [2.5, 97.5])
    return float(low), float(high)


def tied_with_previous(target_timestamps: np.ndarray, previous_timestamps: np.ndarray) -> np.ndarray:
    """True where a test target shares its second with the event before it (the validation event under
    leave_one_out): under the stable sort such a target is the later row of the file, a pattern a sequence model can
    learn (PROTOCOL: a claim must hold on the untied targets too)."""
    return np.asarray(target_timestamps) == np.asarray(previous_timestamps)


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
    tied: np.ndarray | None = None  # leave_one_out test examples tied with the validation event
    users: dict[str, np.ndarray] | None = None  # split -> each test example's user (the bootstrap's clusters)

    def clusters(self, split: str) -> np.ndarray | None:
        return (self.users or {}).get(split)


def runs(records: list[dict], model: str, split: str) -> list[dict]:
    return sorted((r for r in records if r["model"] == model and r["split"] == split), key=lambda r: r["seed"])


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the min-max range (the table's `mean ± half range over seeds`)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def per_seed(records: list[dict], model: str, split: str, fn: Callable, mask: np.ndarray | None = None):
    """fn(test ranks) per example, one row per seed (seeds, examples), restricted to `mask`; None if not run."""
    ranks = [r["test_target_ranks"] for r in runs(records, model, split)]
    if not ranks or len({len(r) for r in ranks}) != 1:
        return None
    values = np.stack([fn(r) for r in ranks])
    return values if mask is None else values[:, mask]


def per_example(records: list[dict], model: str, split: str, fn: Callable, mask: np.ndarray | None = None):
    """fn(test ranks) per example, averaged over the model's seeds and restricted to `mask`; None if not run."""
    values = per_seed(records, model, split, fn, mask)
    return None if values is None else values.mean(axis=0)


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
            label = f"{model} *" if model == "most_voted_tmdb" else model
            lines.append(f"{label:<24} {split:<14} " + " ".join(cells))
        if any(r["model"] == "most_voted_tmdb" and r["split"] == split for r in records):
            lines.append(f"  * most_voted_tmdb ranks by TMDB vote_count, a snapshot taken after the ratings "
                         f"{POST_RELEASE_LABEL}")
        if split == "cold_items" and PEER_SETTINGS and context.num_cold_candidates:
            lines.append("  " + PEER_COLD_NOTE.format(", ".join(PEER_SETTINGS), chance_ndcg(context.num_cold_candidates),
                                                       context.num_cold_candidates))
    return "\n".join(lines)


def slice_table(records: list[dict], title: str, columns: list[tuple[str, Callable, int, np.ndarray]]) -> str:
    """Every model's leave_one_out test metric on slices of the test targets, mean ± half range over seeds; each
    column is (name, per-example metric, K, mask of the targets it averages)."""
    header = f"{'model':<24} " + " ".join(f"{name:>17}" for name, *_ in columns)
    lines = [title, header, "-" * len(header)]
    count = len(columns[0][3])
    for model in MODELS:
        found = [r for r in runs(records, model, "leave_one_out") if len(r["test_target_ranks"]) == count]
        if found:
            cells = [cell([float(fn(r["test_target_ranks"], k)[mask].mean()) for r in found]) for _, fn, k, mask in columns]
            lines.append(f"{model:<24} " + " ".join(cells))
    return "\n".join(lines)


def head_tail_table(records: list[dict], tail: np.ndarray) -> str:
    """Recall@100 and NDCG@100 on the tail and the head of leave_one_out's test targets, for every model."""
    title = (f"leave_one_out head/tail: tail = test targets whose movie has <= {TAIL_MAX_TRAIN_RATINGS} training "
             f"ratings (training events of the split): {int(tail.sum())} of {len(tail)} test users (tail share "
             f"{tail.mean():.1%}); head = the rest. Mean ± half range over seeds.")
    return slice_table(records, title, [
        ("recall@100", recall_per_example, RANK_DEPTH, np.ones_like(tail)),
        ("head recall@100", recall_per_example, RANK_DEPTH, ~tail), ("head ndcg@100", ndcg_per_example, RANK_DEPTH, ~tail),
        ("tail recall@100", recall_per_example, RANK_DEPTH, tail), ("tail ndcg@100", ndcg_per_example, RANK_DEPTH, tail),
    ])


def ties_table(records: list[dict], tied: np.ndarray) -> str:
    """NDCG@10 and Recall@10 of every model on leave_one_out's tied and untied test targets."""
    title = (f"leave_one_out ties: {int(tied.sum())} of {len(tied)} test targets share their second with the "
             "validation event (the stable sort makes them the later file row); untied = the rest. Mean ± half range "
             "over seeds.")
    return slice_table(records, title, [
        ("ndcg@10", ndcg_per_example, 10, np.ones_like(tied)), ("untied ndcg@10", ndcg_per_example, 10, ~tied),
        ("tied ndcg@10", ndcg_per_example, 10, tied), ("untied recall@10", recall_per_example, 10, ~tied),
        ("tied recall@10", recall_per_example, 10, tied),
    ])


def popularity_table(records: list[dict], target_counts: np.ndarray, tied: np.ndarray) -> str:
    """Untied NDCG@10 by the target movie's training-rating count, in quartiles of the untied targets: where a model's
    top 10 wins and loses (a popularity-heavy top 10 wins the last column only)."""
    edges = np.quantile(target_counts[~tied], [0.25, 0.5, 0.75])
    quartile = np.searchsorted(edges, target_counts, side="left")
    names = [f"<= {edges[0]:g}", f"{edges[0]:g} < n <= {edges[1]:g}", f"{edges[1]:g} < n <= {edges[2]:g}", f"> {edges[2]:g}"]
    title = ("leave_one_out untied NDCG@10 by the target movie's training ratings n, in quartiles of the untied test "
             "targets. Mean ± half range over seeds.")
    return slice_table(records, title, [(name, ndcg_per_example, 10, ~tied & (quartile == q)) for q, name in enumerate(names)])


def length_table(records: list[dict], context: Context) -> str:
    """How each learned FusionModel run ended: by validation (early stopping, or the wsd cool-down), or at the cap
    of --max-epochs / --max-steps, which should be a safety bound that validation reaches first."""
    lines = [f"{'training length':<24} {'split':<14} ended by validation   steps, best step per seed"]
    for split in context.splits:
        for model in FUSION_VARIANTS:
            found = [r for r in runs(records, model, split) if r.get("train")]
            if found:
                ended = sum(bool(r["train"].get("stopped_early")) for r in found)
                steps = ", ".join(f"{r['train']['steps']} (best {r['train']['best_step']})" for r in found)
                lines.append(f"{model:<24} {split:<14} {f'{ended} of {len(found)}':<21} {steps}")
    return "\n".join(lines)


# ----- targets -----


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def compare(records, split: str, model: str, other: str, fn: Callable, mask=None, *,
            clusters: np.ndarray | None = None) -> tuple[float, str]:
    """(ratio of means, 'x1.23 [95% CI 1.01-1.50]') of `model` against `other`; the interval resamples the test
    users (clustered: a user's events move together) and each model's seeds (bootstrap_ratio)."""
    ours, theirs = per_seed(records, model, split, fn, mask), per_seed(records, other, split, fn, mask)
    if ours is None or theirs is None or ours.shape[1] != theirs.shape[1]:
        return float("nan"), "(no per-example ranks)"
    value = ratio(ours.mean(), theirs.mean())
    if not ours.shape[1]:
        return value, f"x{value:.2f}"
    if clusters is not None and mask is not None:
        clusters = clusters[mask]
    low, high = bootstrap_ratio(ours, theirs, clusters=clusters)
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


def target_t1(records, context: Context) -> list[str]:
    """fusion_full >= 1.10 x the best peer on every leave_one_out test target and on the untied ones (the tied ones
    printed beside them): a lead that lives on ties is the file's row order, not the model."""
    split = "leave_one_out"
    full = means(records, ["fusion_full"], split, ndcg10).get("fusion_full")
    peers = means(records, PEER_SETTINGS, split, ndcg10)
    if full is None or not peers:
        return ["T1 leave_one_out test NDCG@10 >= 1.10 x the best peer: not run (needs fusion_full and a peer)"]
    best = max(peers, key=peers.get)
    subsets = [("all", None)]
    if context.tied is not None:
        subsets += [("untied", ~context.tied), ("tied", context.tied)]
    checks, lines = [], []
    for name, mask in subsets:
        ours = means(records, ["fusion_full"], split, ndcg10, mask)["fusion_full"]
        theirs = means(records, [best], split, ndcg10, mask)[best]
        value, text = compare(records, split, "fusion_full", best, ndcg10, mask)
        judged = name != "tied"
        if judged:
            checks.append(value >= 1.10)
        count = "" if mask is None else f" ({int(mask.sum())} users)"
        lines.append(f"    {name}{count}: fusion_full {ours:.4f} vs {best} {theirs:.4f} -> {text}"
                     + (f": {verdict(value >= 1.10)}" if judged else " (for information)"))
    head = (f"T1 leave_one_out test NDCG@10 >= 1.10 x the best peer ({best}, {peers[best]:.4f}), on all test targets "
            f"and on the untied ones: {verdict(all(checks))}")
    others = means(records, [m for m in MODELS if m != "fusion_full"], split, ndcg10)
    info = [f"    for information: fusion_full vs {model:<24} {mean:.4f}: "
            f"{compare(records, split, 'fusion_full', model, ndcg10)[1]}"
            for model, mean in sorted(others.items(), key=lambda item: -item[1])]
    return [head, *lines, *info]


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
    """Cold start without hindsight: fusion_full ranks the held-out movies with no votes, popularity or revenue
    (PROTOCOL), against the best content-free model; what the snapshot's post-release numbers would add is printed
    beside it, labelled, and is not part of the target."""
    split = "cold_items"
    full = means(records, ["fusion_full"], split, ndcg10).get("fusion_full")
    free = means(records, CONTENT_FREE, split, ndcg10)
    if full is None or not free:
        return ["T3 cold_items NDCG@10 >= 2 x the best content-free model: not run (needs fusion_full and one of "
                f"{', '.join(CONTENT_FREE)} on cold_items)"]
    best = max(free, key=free.get)
    value, text = compare(records, split, "fusion_full", best, ndcg10, clusters=context.clusters(split))
    lines = [f"T3 cold_items NDCG@10 (held-out movies without post-release features): fusion_full {full:.4f} vs best "
             f"content-free {best} {free[best]:.4f} -> {text} (need >= 2): {verdict(value >= 2.0)}"]
    knn = means(records, ["content_knn"], split, ndcg10).get("content_knn")
    if knn is None:
        lines.append("    vs content_knn (need >= 1.5): not run")
    else:
        value, text = compare(records, split, "fusion_full", "content_knn", ndcg10, clusters=context.clusters(split))
        lines.append(f"    vs the content nearest-neighbour baseline content_knn {knn:.4f} -> {text} (need >= 1.5): "
                     f"{verdict(value >= 1.5)}")
    if context.num_cold_candidates:
        lines.append(f"    chance among the {context.num_cold_candidates} cold movies: NDCG@10 "
                     f"{chance_ndcg(context.num_cold_candidates):.4f}; the peers count as content-free and are not run")
    snapshot = [r["with_post_release"]["test_target_ranks"] for r in runs(records, "fusion_full", split)
                if "with_post_release" in r]
    beside = means(records, ("fusion_content", TARGET_TIME), split, ndcg10)
    if snapshot:
        beside[f"{SNAPSHOT_LABEL} ({len(snapshot)} seeds)"] = float(np.mean([ndcg10(r).mean() for r in snapshot]))
    beside |= {f"most_voted_tmdb {POST_RELEASE_LABEL}": v for v in means(records, ["most_voted_tmdb"], split, ndcg10).values()}
    for model, mean in beside.items():
        lines.append(f"    for information, not part of T3: {model} {mean:.4f} = x{ratio(mean, free[best]):.2f} the "
                     "best content-free model")
    voted = means(records, ["most_voted_tmdb"], split, ndcg10).get("most_voted_tmdb")
    if voted is not None:
        lines.append(f"    for information, not part of T3: fusion_full (without post-release features) = "
                     f"x{ratio(full, voted):.2f} most_voted_tmdb {POST_RELEASE_LABEL}")
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
    return [*target_t1(records, context), *target_t2(records), *target_t3(records, context), *target_t4(records, context),
            "(PASS/FAIL on the point estimate: means over seeds; [95% CI] = bootstrap that resamples the test users, "
            "clustered by user on cold_items, and each model's seeds: bootstrap_ratio)"]
