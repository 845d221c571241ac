"""Recommendation quality of FusionModel against simple baselines on the real Kaggle sample (../shared/PROTOCOL.md).

Protocol: full ranking over the whole catalog (cold_items: among the held-out movies), every movie of the user's
history at that point excluded; Recall/NDCG@10/20, MRR@10/20, coverage@10/20 and the rating head's RMSE on test.
Each learned model is trained on its split's training data only (`--split cold_items` keeps the cold movies out of
training; the baselines likewise), its checkpoint chosen by validation NDCG@10 (OUTPUT_DIR/best), and scored on test.
Seeds 0 and 1 by default; the table shows mean ± half the min-max range over seeds.

Models:
* most_popular: training interaction counts, history excluded. Ties (e.g. every cold movie has count 0) are broken
  by a seeded random order, so on cold_items it is chance.
* most_voted_tmdb: TMDB vote_count from the movie metadata (no interactions; movies without metadata last, random
  among themselves). A non-learned, metadata-based popularity: it uses movie *content* (metadata), so target (b)
  does not count it among the content-free models; it is printed beside them for reference.
* ease: EASE (Steck 2019), closed form B = I - P diag(1/diag P), P = (X^T X + lambda I)^-1 over the binary
  user x movie training matrix, computed exactly through the Woodbury identity (the sample has 671 users, so only
  a 671 x 671 inverse is needed). lambda is chosen per split on validation NDCG@10 from `--ease-lambdas`.
* fusion_ids: FusionModel, movie ids only (`--no-text --no-content-features`).
* fusion_content: FusionModel, content + text only (`--no-id-embedding`).
* fusion_full: FusionModel with ids, content features and all-MiniLM-L6-v2 text (frozen, cached).
* fusion_full+zero_unseen_ids (supplementary, not used by the targets): the same fusion_full checkpoint, scored with
  the id embedding of every movie that has no training interaction set to zero (the input the model learned under
  movie-id dropout). Untrained id embeddings keep their random initialisation (norm ~4 at hidden size 64), which
  the cold movies otherwise carry into their vectors.

All FusionModel runs (defaults, chosen on leave_one_out validation NDCG@10): AdamW lr 1e-2 (cosine, 5% warmup),
batch 32 windows of <= 50 steps, hidden 64, 128 uniform negatives, text 32 tokens through a 1-layer Perceiver (4 heads
of 16); 1000 optimizer steps (~14 epochs) with validation every 100. At 300 steps (~4 epochs) every variant was far
from converged (leave_one_out validation NDCG@10 ~0.03-0.04 against ~0.055-0.06 at 1000 steps).

Targets (checked and printed PASS/FAIL):
  (a) leave_one_out: fusion_full's mean test NDCG@10 >= 1.10 x every baseline's (most_popular, most_voted_tmdb,
      ease, fusion_ids, fusion_content).
  (b) cold_items: fusion_full's mean test NDCG@10 >= 2 x the best content-free model's (most_popular, ease,
      fusion_ids).

Run (from the repository root):

    python bench/bench_quality.py                 # full run (see bench/README.md for measured times)
    python bench/bench_quality.py --quick         # smoke run: few steps, one seed, minutes
    python bench/bench_quality.py --steps 2000 --eval-steps 200 --seeds 0 1 2
    python bench/bench_quality.py --reuse bench/results/quality.json   # resume: keep finished runs, do the rest

The FusionModel trainings of different seeds run in parallel child processes (`--jobs`, default 2, one torch thread
each): on 2 cores that is much faster than one process with two threads, above all when other jobs share the CPU.

Writes bench/results/quality.json: a list of {"model", "split", "seed", "metrics", ...} records, one per
model/split/seed (each also carries "machine", "hyperparameters", "test_target_ranks" (each test example's target
rank, -1 beyond the top 20: the paired bootstrap intervals printed with the targets come from these) and, for trained
models, "validation" and "train").
The dataset is prepared into a temporary folder (never into the repository); the frozen-encoder text cache goes to
`--text-cache-dir` (default: the library's shared cache, $FUSIONREC_CACHE/text or ~/.cache/fusionrec/text) and is
built once and reused by every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from sample_data import DEFAULT_SAMPLE_DIR, require_sample_dir  # noqa: E402

from fusionrec.data.catalog import MovieCatalog  # noqa: E402
from fusionrec.data.collator import movie_frequency  # noqa: E402
from fusionrec.data.loading import load_feature_spec, load_tables  # noqa: E402
from fusionrec.data.sequences import (  # noqa: E402
    EvaluationExamples,
    UserSequence,
    evaluation_examples,
    read_sequences,
    train_sequence,
)
from fusionrec.data.text_cache import build_text_cache, default_cache_root  # noqa: E402
from fusionrec.evaluation import compute_metrics, rank_examples  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from fusionrec.retrieval import catalog_vectors  # noqa: E402

DEFAULT_OUTPUT = BENCH / "results" / "quality.json"
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SPLITS = ("leave_one_out", "cold_items")
K_VALUES = (10, 20)
BASELINES = ("most_popular", "most_voted_tmdb", "ease")
FUSION_VARIANTS = {
    "fusion_ids": ["--no-text", "--no-content-features"],
    "fusion_content": ["--no-id-embedding"],
    "fusion_full": [],
}
ZERO_UNSEEN = "fusion_full+zero_unseen_ids"  # derived from each fusion_full run (see zero_unseen_ids)
MODELS = (*BASELINES, *FUSION_VARIANTS, ZERO_UNSEEN)
CONTENT_FREE = ("most_popular", "ease", "fusion_ids")
TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "coverage@10", "rmse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Quality benchmark: FusionModel variants vs popularity and EASE on the real Kaggle sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default=DEFAULT_SAMPLE_DIR, help="raw Kaggle sample (prepare_dataset.py --source tmdb)")
    parser.add_argument("--dataset", type=Path, help="an already prepared dataset folder (skips preparation)")
    parser.add_argument("--text-cache-dir", type=Path, default=None, help="text-cache root (default: library default)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep datasets/checkpoints here (default: temp, removed)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON records")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--models", nargs="+", choices=(*BASELINES, *FUSION_VARIANTS),
                        default=[*BASELINES, *FUSION_VARIANTS])
    parser.add_argument("--steps", type=int, default=1000, help="max optimizer steps per FusionModel run")
    parser.add_argument("--eval-steps", type=int, default=100, help="validation every N steps (best checkpoint)")
    parser.add_argument("--patience", type=int, default=0, help="early stop after N evaluations without improvement (0: off)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--max-history-length", type=int, default=50)
    parser.add_argument("--text-max-length", type=int, default=32)
    parser.add_argument("--perceiver-depth", type=int, default=1)
    parser.add_argument("--perceiver-head-dim", type=int, default=16)
    parser.add_argument("--num-negatives", type=int, default=128)
    parser.add_argument(
        "--ease-lambdas", type=float, nargs="+", default=[10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0],
        help="EASE L2 grid, chosen per split on validation NDCG@10",
    )
    parser.add_argument(
        "--reuse", type=Path, nargs="+", default=[],
        help="earlier quality.json files: their records for the requested (model, split, seed) are kept, not re-run "
        "(resume an interrupted run, or merge runs made in pieces)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 with --jobs)")
    parser.add_argument(
        "--jobs", type=int, default=2,
        help="FusionModel trainings run as this many parallel processes (one per seed, 1 torch thread each; on a "
        "2-core machine this is much faster than one process with 2 threads)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 steps, seed 0 only")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # --jobs children
    parser.add_argument(
        "--no-snapshot", action="store_true",
        help="run the checkout's code directly (default: a frozen copy of it, so edits during the run cannot mix in)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_steps, args.patience, args.seeds = 30, 15, 0, [args.seeds[0]]
    return args


def say(message: str) -> None:
    print(message, flush=True)


# ----- data -----


def prepare(args: argparse.Namespace, workdir: Path) -> Path:
    if args.dataset:
        return args.dataset
    output = workdir / "dataset"
    command = [sys.executable, str(ROOT / "prepare_dataset.py"), "--source", "tmdb", "--data-dir", str(args.data_dir),
               "--output", str(output), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"prepare_dataset.py failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return output


def machine_info() -> dict:
    cpu_model = ""
    try:
        cpu_model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "")
    except OSError:
        pass
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "code": json.loads(os.environ.get(SNAPSHOT_ENV, "null") or "null"),
    }


SNAPSHOT_ENV = "FUSIONREC_BENCH_SNAPSHOT"


def code_version() -> dict:
    """The repository's commit and whether its tracked files differ from it (read-only git), plus a digest of the
    model file, so a record says which code produced it."""
    import hashlib

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_files": [line.split(maxsplit=1)[-1] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "modeling_fusionrec_sha256": hashlib.sha256((ROOT / "modeling_fusionrec.py").read_bytes()).hexdigest()[:16],
    }


def run_from_snapshot(argv: list[str], output: Path) -> int:
    """Copy the code (top-level modules, fusionrec/, bench/*.py) to a temp folder and run the benchmark from there:
    a run takes tens of minutes, and a module edited meanwhile in the checkout would otherwise mix code versions
    between runs, or between a checkpoint's training and the remote code saved with it and used to evaluate it."""
    snapshot = Path(tempfile.mkdtemp(prefix="bench_quality-src-"))
    try:
        for path in ROOT.glob("*.py"):
            shutil.copy2(path, snapshot / path.name)
        shutil.copytree(ROOT / "fusionrec", snapshot / "fusionrec", ignore=shutil.ignore_patterns("__pycache__"))
        (snapshot / "bench").mkdir()
        for path in BENCH.glob("*.py"):
            shutil.copy2(path, snapshot / "bench" / path.name)
        env = {**os.environ, SNAPSHOT_ENV: json.dumps(code_version())}
        command = [sys.executable, str(snapshot / "bench" / "bench_quality.py"), *argv, "--output", str(output)]
        return subprocess.run(command, env=env).returncode
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


# ----- baselines: score matrices over the catalog, ranked with history excluded and seeded tie-breaking -----


def rank_scores(scores: np.ndarray, examples: EvaluationExamples, part: slice, tiebreak: np.ndarray, k: int):
    """Top-k movie indices per row of `scores` (rows = examples[part]); history and non-candidates excluded (-1 pads);
    equal scores are ordered by the seeded permutation `tiebreak`."""
    scores = scores.astype(np.float64, copy=True)
    for row, seen in enumerate(examples.exclusions()[part]):
        scores[row, seen] = -np.inf
    if examples.candidate_mask is not None:
        scores[:, ~examples.candidate_mask] = -np.inf
    permuted = scores[:, tiebreak]
    order = np.argsort(-permuted, axis=1, kind="stable")[:, :k]
    top = tiebreak[order]
    return np.where(np.take_along_axis(permuted, order, axis=1) == -np.inf, -1, top)


def rank_baseline(score_fn, examples: EvaluationExamples, *, seed: int, num_movies: int, batch: int = 512):
    tiebreak = np.random.default_rng(seed).permutation(num_movies)
    ranked = [
        rank_scores(score_fn(examples.histories[start : start + batch]), examples, slice(start, start + batch),
                    tiebreak, max(K_VALUES))
        for start in range(0, len(examples), batch)
    ]
    ranked = np.concatenate(ranked) if ranked else np.zeros((0, max(K_VALUES)), np.int64)
    metrics = compute_metrics(ranked, np.zeros(len(examples), np.float32), examples, num_movies=num_movies,
                              k_values=K_VALUES)
    metrics.pop("rmse", None)  # no rating head
    return metrics, target_ranks(ranked, examples.targets)


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> list[int]:
    """0-based position of each example's target in its ranked list, -1 when it is not there: enough to recompute
    every hit metric per example (paired significance between models)."""
    hits = ranked == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1).tolist()


def ndcg_per_example(ranks, k: int = 10) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2), 0.0)


def paired_bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, *, samples: int = 10_000, seed: int = 0):
    """95% interval of mean(numerator) / mean(denominator) over resamples of the same examples for both."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(numerator), size=(samples, len(numerator)))
    ratios = numerator[picks].mean(axis=1) / np.maximum(denominator[picks].mean(axis=1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


class Ease:
    """EASE with B = I - P diag(1/diag P), P = (X^T X + lambda I)^-1. With U users, Woodbury gives
    X^T X + lambda I)^-1 = (I - X^T M X) / lambda, M = (lambda I_U + X X^T)^-1, so for a history row h and a movie j
    outside it: score_j = -(hP)_j / P_jj = (h X^T M X)_j / (1 - (X^T M X)_jj)."""

    def __init__(self, train: list[UserSequence], num_movies: int) -> None:
        rows = np.concatenate([np.full(len(s.movies), i) for i, s in enumerate(train)])
        columns = np.concatenate([s.movies for s in train])
        self.x = np.zeros((len(train), num_movies), np.float64)
        self.x[rows, columns] = 1.0
        self.gram_users = self.x @ self.x.T
        self.num_movies = num_movies

    def fit(self, lam: float) -> Ease:
        m = np.linalg.inv(lam * np.eye(len(self.x)) + self.gram_users)
        self.mx = m @ self.x
        self.denominator = 1.0 - (self.mx * self.x).sum(axis=0)
        return self

    def scores(self, histories: list[UserSequence]) -> np.ndarray:
        h = np.zeros((len(histories), self.num_movies), np.float64)
        for row, history in enumerate(histories):
            h[row, history.movies] = 1.0
        return (h @ self.x.T) @ self.mx / self.denominator


def baseline_records(name: str, split: str, seeds: list[int], rows, catalog, spec, args, machine) -> list[dict]:
    cold = catalog.cold_item.numpy()
    num_movies = len(catalog)
    train = [s for s in (train_sequence(row, split, cold) for row in rows) if len(s.movies)]
    validation = evaluation_examples(rows, split, "validation", cold)
    test = evaluation_examples(rows, split, "test", cold)
    hyper: dict = {}
    started = time.perf_counter()
    if name == "most_popular":
        counts = movie_frequency(train, num_movies).astype(np.float64)

        def score_fn(histories):
            return np.broadcast_to(counts, (len(histories), num_movies))
    elif name == "most_voted_tmdb":
        names = spec["numeric_features"]["names"]
        votes = catalog.numeric[:, names.index("log_vote_count")].numpy().astype(np.float64)
        votes = np.where(np.isfinite(votes), votes, -1e9)  # no metadata: last (random among themselves)
        hyper["feature"] = "log_vote_count (TMDB metadata)"

        def score_fn(histories):
            return np.broadcast_to(votes, (len(histories), num_movies))
    elif name == "ease":
        ease = Ease(train, num_movies)
        grid = {}
        for lam in args.ease_lambdas:
            grid[lam] = rank_baseline(ease.fit(lam).scores, validation, seed=seeds[0], num_movies=num_movies)[0][
                "ndcg@10"
            ]
        best = max(grid, key=grid.get)
        ease.fit(best)
        hyper.update(lambda_=best, validation_ndcg10_by_lambda={str(k): round(v, 5) for k, v in grid.items()})
        say(f"  ease {split}: validation ndcg@10 by lambda {hyper['validation_ndcg10_by_lambda']} -> lambda {best:g}")
        score_fn = ease.scores
    else:
        raise ValueError(name)
    records = []
    for seed in seeds:
        valid_metrics, _ = rank_baseline(score_fn, validation, seed=seed, num_movies=num_movies)
        metrics, ranks = rank_baseline(score_fn, test, seed=seed, num_movies=num_movies)
        metrics["num_examples"] = len(test)
        records.append({
            "model": name, "split": split, "seed": seed, "metrics": metrics, "test_target_ranks": ranks,
            "validation": valid_metrics,
            "hyperparameters": hyper, "seconds": round(time.perf_counter() - started, 2), "machine": machine,
        })
    return records


# ----- FusionModel -----


TRAINING_OPTIONS = (
    "eval_steps", "patience", "batch_size", "learning_rate", "hidden_size", "max_history_length", "text_max_length",
    "perceiver_depth", "perceiver_head_dim", "num_negatives",
)


def training_options(args) -> list[str]:
    """The options this script shares, under the same names, with train_accelerate.py and its seed children."""
    return [part for name in TRAINING_OPTIONS for part in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


def fusion_argv(variant: str, split: str, seed: int, dataset: Path, output: Path, args) -> list[str]:
    return [
        "--dataset", str(dataset), "--output-dir", str(output), "--split", split, "--seed", str(seed),
        "--max-steps", str(args.steps), *training_options(args), "--text-encoder", TEXT_ENCODER,
        "--text-cache-dir", str(args.text_cache_dir), "--report-to", "none", "--no-progress",
        *FUSION_VARIANTS[variant],
    ]


def fusion_records(variant: str, split: str, seed: int, dataset: Path, workdir: Path, rows, catalog, args, machine):
    from fusionrec.cli import load_model
    from fusionrec.training import loop, options

    output = workdir / "runs" / f"{variant}-{split}-seed{seed}"
    argv = fusion_argv(variant, split, seed, dataset, output, args)
    started = time.perf_counter()
    summary = loop.train(options.parse_args(argv))
    train_seconds = time.perf_counter() - started
    model = load_model(output / "best")
    cold = catalog.cold_item.numpy()
    test = evaluation_examples(rows, split, "test", cold)
    metrics, ranks = score_model(model, catalog, test)
    best_valid = next((h for h in summary["history"] if h.get("step") == summary["best_step"] and "ndcg@10" in h), {})
    curve = [(h["step"], round(h["ndcg@10"], 4)) for h in summary["history"] if "ndcg@10" in h]
    say(f"  {variant} {split} seed {seed}: validation ndcg@10 curve {curve}; best step {summary['best_step']}; "
        f"test ndcg@10 {metrics['ndcg@10']:.4f} ({train_seconds:.0f}s)")
    shutil.rmtree(output / "final", ignore_errors=True)
    record = {
        "model": variant, "split": split, "seed": seed, "metrics": metrics, "test_target_ranks": ranks,
        "validation": {k: v for k, v in best_valid.items() if k != "step"},
        "train": {
            "steps": summary["global_step"], "best_step": summary["best_step"],
            "stopped_early": summary["stopped_early"], "seconds": round(train_seconds, 1),
            "validation_ndcg10_curve": curve,
        },
        "hyperparameters": {"train_accelerate_argv": argv[6:]},
        "machine": machine,
    }
    if variant != "fusion_full":
        return [record]
    return [record, zero_unseen_record(record, model, catalog, rows, split, test)]


@torch.no_grad()
def score_model(model, catalog, examples: EvaluationExamples) -> tuple[dict, list[int]]:
    """Test metrics of a FusionModel (as fusionrec.evaluation.evaluate_split) and each example's target rank."""
    ranked, predicted = rank_examples(model, examples, catalog_vectors(model, catalog), k=max(K_VALUES))
    metrics = compute_metrics(ranked, predicted, examples, num_movies=len(catalog), k_values=K_VALUES)
    metrics["num_examples"] = len(examples)
    return metrics, target_ranks(ranked, examples.targets)


def zero_unseen_ids(model, rows, split: str, cold: np.ndarray) -> int:
    """Zero the id embedding of every movie without a training interaction under `split` (its embedding was never
    trained: it keeps its random initialisation, norm ~4 at hidden size 64). Zero is the input the model learned
    under movie-id dropout, so such a movie is scored from its content alone. Uses training data only."""
    train = [train_sequence(row, split, cold) for row in rows]
    unseen = torch.from_numpy(movie_frequency(train, len(cold)) == 0)
    with torch.no_grad():
        model.movie_tower.id_embedding.weight[unseen] = 0.0
    return int(unseen.sum())


def zero_unseen_record(record: dict, model, catalog, rows, split: str, test) -> dict:
    """The same fusion_full checkpoint scored with unseen movies' id embeddings zeroed (an inference-time rule)."""
    count = zero_unseen_ids(model, rows, split, catalog.cold_item.numpy())
    metrics, ranks = score_model(model, catalog, test)
    say(f"  {ZERO_UNSEEN} {split} seed {record['seed']}: {count} unseen movies zeroed; test ndcg@10 "
        f"{metrics['ndcg@10']:.4f}")
    return {
        **record, "model": ZERO_UNSEEN, "metrics": metrics, "test_target_ranks": ranks, "validation": {},
        "note": f"the {record['model']} checkpoint of this split/seed, evaluated with the id embedding of the {count} "
        "movies that have no training interaction set to zero (supplementary; not used by the targets)",
    }


# ----- report -----


def aggregate(records: list[dict]) -> dict:
    """(model, split) -> metric -> (mean, half range, values)."""
    table: dict = {}
    for record in records:
        table.setdefault((record["model"], record["split"]), []).append(record["metrics"])
    out = {}
    for key, metrics_list in table.items():
        out[key] = {}
        for name in metrics_list[0]:
            values = [m[name] for m in metrics_list if isinstance(m.get(name), float)]
            if values:
                out[key][name] = (statistics.fmean(values), (max(values) - min(values)) / 2, values)
    return out


def format_table(summary: dict, splits: list[str]) -> str:
    header = f"{'model':<27} {'split':<14} " + " ".join(f"{m:>17}" for m in TABLE_METRICS)
    lines = [header, "-" * len(header)]
    for split in splits:
        for model in MODELS:
            cells = summary.get((model, split))
            if cells is None:
                continue
            row = []
            for metric in TABLE_METRICS:
                if metric in cells:
                    mean, half, _ = cells[metric]
                    row.append(f"{mean:>8.4f} ± {half:<6.4f}")
                else:
                    row.append(f"{'-':>17}")
            lines.append(f"{model:<27} {split:<14} " + " ".join(row))
    return "\n".join(lines)


def per_example_ndcg(records: list[dict], model: str, split: str) -> np.ndarray | None:
    """Test NDCG@10 per example, averaged over the model's seeds (None if a record lacks target ranks)."""
    ranks = [r.get("test_target_ranks") for r in records if r["model"] == model and r["split"] == split]
    if not ranks or any(r is None for r in ranks):
        return None
    return np.mean([ndcg_per_example(r) for r in ranks], axis=0)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def compare(records: list[dict], split: str, full: float, model: str, value: float) -> str:
    """'x ratio [95% paired-bootstrap interval over test examples]' of fusion_full against `model`."""
    ours, theirs = per_example_ndcg(records, "fusion_full", split), per_example_ndcg(records, model, split)
    if ours is None or theirs is None:
        return f"x{ratio(full, value):.2f}"
    low, high = paired_bootstrap_ratio(ours, theirs)
    return f"x{ratio(full, value):.2f} [95% CI {low:.2f}-{high:.2f}]"


def check_targets(summary: dict, records: list[dict]) -> list[str]:
    """Targets (a) and (b) on seed means; each ratio also with a paired bootstrap interval over the test users (the
    same users rank under every model, so the interval shows how well this test set resolves the difference)."""

    def ndcgs(models, split: str) -> dict[str, float]:
        cells = {model: summary.get((model, split), {}).get("ndcg@10") for model in models}
        return {model: cell[0] for model, cell in cells.items() if cell is not None}

    lines = []
    full = ndcgs(["fusion_full"], "leave_one_out").get("fusion_full")
    others = ndcgs([m for m in MODELS if m not in ("fusion_full", ZERO_UNSEEN)], "leave_one_out")
    if full is None or not others:
        lines.append("(a) leave_one_out: not run")
    else:
        best = max(others, key=others.get)
        verdict = "PASS" if ratio(full, others[best]) >= 1.10 else "FAIL"
        lines.append(f"(a) leave_one_out NDCG@10: fusion_full {full:.4f} vs best other {best} {others[best]:.4f} "
                     f"-> x{ratio(full, others[best]):.2f} (need >= 1.10): {verdict}")
        for model, value in sorted(others.items(), key=lambda item: -item[1]):
            lines.append(f"    fusion_full vs {model:<16} {value:.4f}: "
                         f"{compare(records, 'leave_one_out', full, model, value)}")
    full = ndcgs(["fusion_full"], "cold_items").get("fusion_full")
    free = ndcgs(CONTENT_FREE, "cold_items")
    if full is None or not free:
        lines.append("(b) cold_items: not run")
    else:
        best = max(free, key=free.get)
        verdict = "PASS" if ratio(full, free[best]) >= 2.0 else "FAIL"
        lines.append(f"(b) cold_items NDCG@10: fusion_full {full:.4f} vs best content-free {best} {free[best]:.4f} "
                     f"-> {compare(records, 'cold_items', full, best, free[best])} (need >= 2): {verdict}")
        for reference, value in ndcgs(("most_voted_tmdb", "fusion_content", ZERO_UNSEEN), "cold_items").items():
            lines.append(f"    for reference (uses content, not part of (b)): {reference} {value:.4f} "
                         f"= x{ratio(value, free[best]):.2f} the best content-free model")
    return lines


def write_records(records: list[dict], path: Path) -> None:
    lines = ",\n".join(json.dumps(record, default=str) for record in records)  # one record per line
    atomic_write_text(path, f"[\n{lines}\n]\n")


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if SNAPSHOT_ENV not in os.environ and not args.no_snapshot:
        if not args.dataset:  # resolved here: the snapshot's copy does not sit beside ../shared
            argv += ["--data-dir", str(require_sample_dir(args.data_dir))]
        code = run_from_snapshot(argv, args.output.resolve())
        if code:
            sys.exit(code)
        return json.loads(args.output.read_text(encoding="utf-8"))
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.text_cache_dir is None:
        args.text_cache_dir = default_cache_root()
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_quality-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets-cache")  # private Arrow cache, removed with workdir
    import datasets

    datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])
    datasets.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    wanted = {(m, s, seed) for m in args.models for s in args.splits for seed in args.seeds}
    if "fusion_full" in args.models:
        wanted |= {(ZERO_UNSEEN, s, seed) for s in args.splits for seed in args.seeds}
    reused = {}
    for path in args.reuse:
        for record in json.loads(Path(path).read_text(encoding="utf-8")):
            key = (record["model"], record["split"], record["seed"])
            if key in wanted:
                reused[key] = {**record, "reused_from": str(path)}
    if reused:
        say(f"reusing {len(reused)} records from {', '.join(map(str, args.reuse))}")
    records: list[dict] = []
    try:
        dataset = prepare(args, workdir)
        say(f"dataset: {dataset} ({time.perf_counter() - started:.0f}s)")
        spec = load_feature_spec(dataset)
        movies, sequences = load_tables(dataset)
        rows = read_sequences(sequences)
        catalog = MovieCatalog.from_table(movies, spec)
        text_runs = [(m, s, seed) for (m, s, seed) in wanted if m in FUSION_VARIANTS and m != "fusion_ids"]
        if any(key not in reused for key in text_runs):
            states, lengths = build_text_cache(
                catalog.texts, cache_root=args.text_cache_dir, encoder_name=TEXT_ENCODER, revision=None,
                max_length=args.text_max_length, show_progress=False,
            )
            catalog.attach_text_cache(states, lengths)
            say(f"text cache ready: {tuple(states.shape)} ({time.perf_counter() - started:.0f}s)")
        for split in args.splits:
            for name in (m for m in args.models if m in BASELINES):
                if all((name, split, seed) in reused for seed in args.seeds):
                    records += [reused[(name, split, seed)] for seed in args.seeds]
                    continue
                records += baseline_records(name, split, args.seeds, rows, catalog, spec, args, machine)
                say(f"  {name} {split}: test ndcg@10 {[round(r['metrics']['ndcg@10'], 4) for r in records[-len(args.seeds):]]}")
            write_records(records, args.output)
        pending = [key for key in sorted(wanted) if key[0] in FUSION_VARIANTS and key not in reused]
        if args.jobs > 1 and len({seed for _, _, seed in pending}) > 1:
            for record in run_seed_processes(args, dataset, workdir, sorted({seed for _, _, seed in pending})):
                key = (record["model"], record["split"], record["seed"])
                if key in wanted:
                    reused[key] = record
        for split in args.splits:
            for variant in (m for m in args.models if m in FUSION_VARIANTS):
                for seed in args.seeds:
                    if (variant, split, seed) in reused:
                        records.append(reused[(variant, split, seed)])
                        if variant == "fusion_full" and (ZERO_UNSEEN, split, seed) in reused:
                            records.append(reused[(ZERO_UNSEEN, split, seed)])
                        continue
                    records += fusion_records(variant, split, seed, dataset, workdir, rows, catalog, args, machine)
                    write_records(records, args.output)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    for record in records:
        if "reused_from" not in record:
            record["total_benchmark_seconds"] = round(total, 1)
    write_records(records, args.output)
    if args.no_summary:
        return records
    summary = aggregate(records)
    say("")
    say(f"test metrics, mean ± half min-max range over seeds {args.seeds} (full ranking, history excluded; "
        f"cold_items ranks among the {int(catalog.cold_item.sum())} cold movies)")
    say(format_table(summary, args.splits))
    say("(rating reference: predicting the split's mean training rating gives test RMSE "
        + ", ".join(f"{split} {rmse_constant(rows, split, catalog):.4f}" for split in args.splits) + ")")
    say("")
    for line in check_targets(summary, records):
        say(line)
    say(f"total {total / 60:.1f} min; wrote {args.output}")
    return records


def run_seed_processes(args, dataset: Path, workdir: Path, seeds: list[int]) -> list[dict]:
    """Train the FusionModel variants of each seed in a child process of this script (at most `--jobs` at once, one
    torch thread each) and return their records. Baselines and the text cache are done by the parent first."""
    fusion = [m for m in args.models if m in FUSION_VARIANTS]
    running: list[subprocess.Popen] = []
    outputs = []
    for seed in seeds:
        output = workdir / f"seed{seed}.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--dataset", str(dataset), "--workdir", str(workdir),
            "--text-cache-dir", str(args.text_cache_dir), "--output", str(output), "--seeds", str(seed),
            "--splits", *args.splits, "--models", *fusion, "--steps", str(args.steps), *training_options(args),
            "--threads", str(args.threads or 1), "--jobs", "1", "--no-summary",
        ]
        while sum(process.poll() is None for process in running) >= args.jobs:
            time.sleep(2)
        process = subprocess.Popen(command, cwd=ROOT)
        say(f"seed {seed}: training {', '.join(fusion)} in child process {process.pid}")
        running.append(process)
        outputs.append((process, output))
    records = []
    for process, output in outputs:
        if process.wait() != 0:
            sys.exit(f"seed child {process.pid} failed with exit code {process.returncode}")
        records += json.loads(output.read_text(encoding="utf-8"))
    return records


def rmse_constant(rows, split: str, catalog) -> float:
    """RMSE on test of a constant prediction: the mean rating of the split's training data."""
    cold = catalog.cold_item.numpy()
    value = float(np.concatenate([train_sequence(row, split, cold).ratings for row in rows]).mean())
    test = evaluation_examples(rows, split, "test", cold)
    return float(np.sqrt(np.mean((test.target_ratings - value) ** 2)))


if __name__ == "__main__":
    main()
