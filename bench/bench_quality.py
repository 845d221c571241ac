"""Recommendation quality of FusionModel against RecTools SASRec/BERT4Rec, EASE and popularity on the real Kaggle
sample (../shared/PROTOCOL.md), with the four targets of issue 12.

Protocol: full ranking over the whole catalog (cold_items: among the held-out movies), every movie the user rated
before the target excluded, the user vector read as of the user's last known event; Recall/NDCG/MRR/coverage@10/20,
Recall/NDCG@100 (from each test target's rank, stored to depth 100) and the rating head's RMSE on test. Each
learned model is trained on its split's training data only, its checkpoint chosen by validation NDCG@10, and scored
on test. Seeds 0 and 1 by default; tables show mean ± half the min-max range over seeds.

Models:
* most_popular: training interaction counts; ties (e.g. every cold movie has count 0) broken by a seeded random
  order, so on cold_items it is chance.
* most_voted_tmdb: TMDB vote_count (metadata, so a *content* baseline; not among T3's content-free models).
* content_knn: the classic content recommender (T3's second yardstick): cosine between a movie's frozen text vector
  (all-MiniLM-L6-v2, mean-pooled) plus genres and the rating-weighted sum of the user's rated movies; no
  post-release data; the genre weight and rating weighting chosen per split on validation NDCG@10.
* ease: EASE (Steck 2019) through the Woodbury identity (only a users x users inverse); lambda chosen per split on
  validation NDCG@10 from --ease-lambdas.
* fusion_ids / fusion_content / fusion_full: FusionModel with movie ids only, content + text only, and everything
  (all-MiniLM-L6-v2, frozen, cached), trained with train_accelerate.py's defaults, i.e. the command a user types
  (epochs sized from the data, validation once per epoch, early stopping); the options under "FusionModel
  training" override them. The ablations are in the table with their intervals; they are not targets.
* fusion_full@target_time (labelled extra, never used by a target): each fusion_full checkpoint scored with user
  vectors read as of the target's own time, a variant PROTOCOL.md allows beside the main number.
* rectools_sasrec / rectools_bert4rec / rectools_sasrec_cat (SASRec + CatFeaturesItemNet over our categorical and bag
  columns): RecTools 0.19 in its own virtualenv (bench/peers/), fed from the same prepared folder, on leave_one_out
  only. Their settings are one table, PEER_SETTINGS in bench/quality_jobs.py.

Jobs: every (model, split, seed) writes its own record file under WORKDIR/records/ (atomically); a persistent
--workdir resumes: finished records made with the same settings are kept, the rest re-run. Baselines run in this
process; FusionModel variants and peers run as child processes, at most --jobs at once, one torch thread each.
Targets (bench/quality_report.py, PASS/FAIL on seed means with paired-bootstrap 95% intervals over test users):
  T1 leave_one_out test NDCG@10: fusion_full >= 1.10 x the best peer, on all test targets and on the untied ones.
  T2 time to quality: fusion_full's training CPU-seconds to first reach the best peer's validation NDCG@10 <= half
     that peer's training CPU-seconds.
  T3 cold_items NDCG@10 without post-release features: fusion_full >= 2 x the best content-free model
     (most_popular, ease, fusion_ids) and >= 1.5 x content_knn.
  T4 long tail (leave_one_out targets whose movie has <= 30 training ratings): Recall@100 of fusion_full >= 1.2 x
     fusion_ids and the best peer; on the head at least level with both.

Run (from the repository root):

    python bench/bench_quality.py --workdir /tmp/bq        # the full benchmark; resume with the same --workdir
    python bench/bench_quality.py --quick --workdir /tmp/bq_quick   # smoke run: 30 steps, seed 0, peers 2 epochs
    python bench/bench_quality.py --reuse bench/results/quality.json --seeds 0 1 2   # add a seed, keep the rest
    python bench/bench_quality.py --workdir /tmp/bq --report-only   # report what has finished so far

Writes bench/results/quality.json (a list of records, one per line; --quick: WORKDIR/quality-quick.json) and the
printed report beside it (quality_report.txt). The dataset is prepared into the workdir (never into the repository);
the text cache goes to WORKDIR/text-cache by default, so its one-time build is timed (--text-cache-dir DIR: reuse a
warm cache, whose build is then not timed). The code runs from a frozen snapshot of the checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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
sys.path.insert(0, str(BENCH))

import quality_report as report  # noqa: E402
from quality_jobs import (  # noqa: E402
    BASELINES,
    DEFAULT_PEER_PYTHON,
    FUSION_VARIANTS,
    MODELS,
    PEER_SETTINGS,
    PEER_SPLITS,
    SNAPSHOT_ENV,
    SPLITS,
    TARGET_TIME,
    TRAINING_OPTIONS,
    BenchData,
    PeerMismatch,
    baseline_config,
    baseline_records,
    build_text_cache_timed,
    finished_records,
    fusion_job,
    machine_info,
    peer_job,
    run_children,
    run_fusion_job,
    say,
    text_tokens,
    write_record,
)
from sample_data import DEFAULT_SAMPLE_DIR, require_sample_dir  # noqa: E402

from fusionrec.io import atomic_write_text  # noqa: E402

DEFAULT_OUTPUT = BENCH / "results" / "quality.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Quality benchmark: FusionModel vs RecTools peers, EASE and popularity on the real Kaggle sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default=DEFAULT_SAMPLE_DIR, help="raw Kaggle sample (prepare_dataset.py --source tmdb)")
    parser.add_argument("--dataset", type=Path, help="an already prepared dataset folder (skips preparation)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="dataset, text cache, checkpoints, logs and records/ (kept: a rerun resumes); "
                        "default: a temp folder, removed")
    parser.add_argument("--text-cache-dir", type=Path, default=None,
                        help="text-cache root (default: WORKDIR/text-cache, so the one-time build is timed)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON records (default: {DEFAULT_OUTPUT.relative_to(ROOT)}; --quick: WORKDIR/quality-quick.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help=f"({TARGET_TIME} comes with fusion_full; peers run on {', '.join(PEER_SPLITS)} only)")
    training = parser.add_argument_group(
        "FusionModel training", "train_accelerate.py's options of the same names; unset, its defaults (a user's command)"
    )
    training.add_argument("--steps", type=int, default=None, help="max optimizer steps (default: its epoch schedule)")
    for name, kind in TRAINING_OPTIONS.items():
        training.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument(
        "--ease-lambdas", type=float, nargs="+", default=[10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0],
        help="EASE L2 grid, chosen per split on validation NDCG@10",
    )
    parser.add_argument("--peer-patience", type=int, default=None, help="override every peer's patience (epochs)")
    parser.add_argument("--peer-max-epochs", type=int, default=None, help="override every peer's max epochs")
    parser.add_argument("--peer-python", type=Path, default=None,
                        help=f"the peer virtualenv's python (default {DEFAULT_PEER_PYTHON.relative_to(ROOT)}, made "
                        "by bench/peers/setup_rectools.sh when missing)")
    parser.add_argument(
        "--reuse", type=Path, nargs="+", default=[],
        help="earlier quality.json files: their records for the requested (model, split, seed), made with the same "
        "settings, are kept, not re-run (merge runs made in pieces)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process (children: 1)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="child processes at once (FusionModel runs and peers, one torch thread each)")
    parser.add_argument(
        "--report-only", action="store_true",
        help="report on the child-job records already finished in --workdir; run none of the missing ones (a run "
        "still in progress, or one to finish later); the baselines, seconds each, still run",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 30 steps, the first seed only, peers --peer-max-epochs 2")
    parser.add_argument("--run-job", help=argparse.SUPPRESS)  # MODEL:SPLIT:SEED, a FusionModel child job
    parser.add_argument(
        "--no-snapshot", action="store_true",
        help="run the checkout's code directly (default: a frozen copy of it, so edits during the run cannot mix in)",
    )
    args = parser.parse_args(argv)
    if args.report_only and args.workdir is None:
        parser.error("--report-only reads the records of a --workdir; give the one the benchmark ran in")
    if args.quick:
        args.steps, args.eval_steps, args.patience, args.seeds = 30, 15, 0, [args.seeds[0]]
        args.peer_max_epochs = 2 if args.peer_max_epochs is None else args.peer_max_epochs
    return args


# ----- the code snapshot -----


def code_version() -> dict:
    """The repository's commit and whether its tracked files differ from it (read-only git), plus a digest of the
    model file, so a record says which code produced it."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_files": [line.split(maxsplit=1)[-1] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "modeling_fusionrec_sha256": hashlib.sha256((ROOT / "modeling_fusionrec.py").read_bytes()).hexdigest()[:16],
    }


def run_from_snapshot(argv: list[str]) -> int:
    """Copy the code (top-level modules, fusionrec/, bench/*.py, the peer runner) to a temp folder and run the
    benchmark from there: a run takes hours, and a module edited meanwhile in the checkout would otherwise mix code
    versions between runs, or between a checkpoint's training and the remote code saved with it."""
    snapshot = Path(tempfile.mkdtemp(prefix="bench_quality-src-"))
    try:
        for path in ROOT.glob("*.py"):
            shutil.copy2(path, snapshot / path.name)
        shutil.copytree(ROOT / "fusionrec", snapshot / "fusionrec", ignore=shutil.ignore_patterns("__pycache__"))
        (snapshot / "bench" / "peers").mkdir(parents=True)
        for path in [*BENCH.glob("*.py"), BENCH / "peers" / "rectools_peer.py"]:
            shutil.copy2(path, snapshot / path.relative_to(ROOT))
        env = {**os.environ, SNAPSHOT_ENV: json.dumps(code_version())}
        return subprocess.run([sys.executable, str(snapshot / "bench" / "bench_quality.py"), *argv], env=env).returncode
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def peer_python(args) -> Path:
    """The peer virtualenv's python; made by bench/peers/setup_rectools.sh when the default one is missing."""
    if args.peer_python is not None:
        if not args.peer_python.is_file():
            sys.exit(f"error: --peer-python {args.peer_python}: not found; run bench/peers/setup_rectools.sh "
                     "(RECTOOLS_VENV=DIR to place it) or leave --peer-python out")
        return args.peer_python.absolute()
    if not DEFAULT_PEER_PYTHON.is_file():
        say(f"the RecTools peer virtualenv is missing ({DEFAULT_PEER_PYTHON.parent.parent}): running "
            "bench/peers/setup_rectools.sh first (about 4 minutes)")
        if subprocess.run(["bash", str(BENCH / "peers" / "setup_rectools.sh")], cwd=ROOT).returncode:
            sys.exit("error: bench/peers/setup_rectools.sh failed; see its output above")
    return DEFAULT_PEER_PYTHON


def resolved_argv(argv: list[str], args) -> list[str]:
    """argv with what the snapshot cannot find by itself: the sample folder, the peer python, the output path."""
    argv = list(argv)
    if not args.dataset and not args.run_job:
        argv += ["--data-dir", str(require_sample_dir(args.data_dir).resolve())]
    if runs_peers(args):
        argv += ["--peer-python", str(peer_python(args))]
    return argv + ["--output", str(output_path(args))]


def output_path(args) -> Path:
    if args.output is not None:
        return args.output.resolve()
    if args.quick:
        return (args.workdir.resolve() if args.workdir else Path(tempfile.gettempdir())) / "quality-quick.json"
    return DEFAULT_OUTPUT


def runs_peers(args) -> bool:
    return any(m in PEER_SETTINGS for m in args.models) and any(s in PEER_SPLITS for s in args.splits)


# ----- data -----


def prepare(args: argparse.Namespace, workdir: Path) -> Path:
    if args.dataset:
        return args.dataset.resolve()
    output, partial = workdir / "dataset", workdir / "dataset.partial"
    if output.is_dir():  # a resumed workdir: prepared already (renamed into place when complete)
        return output
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, str(ROOT / "prepare_dataset.py"), "--source", "tmdb", "--data-dir", str(args.data_dir),
               "--output", str(partial), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"prepare_dataset.py failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    partial.rename(output)
    return output


def rmse_constant(data: BenchData, split: str) -> float:
    """RMSE on test of a constant prediction: the mean rating of the split's training data."""
    value = float(np.concatenate([sequence.ratings for sequence in data.train(split)]).mean())
    test = data.examples(split, "test")
    return float(np.sqrt(np.mean((test.target_ratings - value) ** 2)))


def text_cache_line(timing: dict | None, *, built_now: bool) -> str:
    """`built_now` tells a build timed by this invocation from one read back from the workdir's text_cache.json."""
    if timing is None:
        return "text cache: not needed (no text model run in this invocation)"
    head = (f"text cache (one-time per catalog, shared by every text run, in no model's training CPU-s): "
            f"{timing['texts']} movie texts, {timing['encoder']}, {timing['max_length']} tokens: ")
    if timing["texts_encoded"]:
        when = "in this invocation" if built_now else "by an earlier invocation (recorded in the workdir's text_cache.json)"
        return head + (f"built {timing['texts_encoded']} in {timing['cpu_seconds']:.0f} CPU-s "
                       f"({timing['wall_seconds']:.0f} s wall, {timing['torch_threads']} torch threads) {when}")
    return head + (f"warm, loaded in {timing['cpu_seconds']:.1f} CPU-s; its build was not timed here "
                   "(leave --text-cache-dir out to build and time it in the workdir)")


def write_records(records: list[dict], path: Path) -> None:
    lines = ",\n".join(json.dumps(record, default=str) for record in records)  # one record per line
    atomic_write_text(path, f"[\n{lines}\n]\n")


# ----- the run -----


def plan(args, workdir: Path, data: BenchData, machine: dict) -> list:
    """Every child job this invocation wants, longest first: peers, then the text models, then ids only."""
    jobs = []
    for model in (m for m in (*PEER_SETTINGS, *reversed(FUSION_VARIANTS)) if m in args.models):
        for split in args.splits:
            for seed in args.seeds:
                if model not in PEER_SETTINGS:
                    jobs.append(fusion_job(model, split, seed, args, workdir, data.dataset))
                elif split in PEER_SPLITS:
                    jobs.append(peer_job(model, split, seed, args, workdir, data, machine))
    return jobs


def reused_records(paths: list[Path]) -> dict:
    """(model, split, seed) -> record from earlier quality.json files (checked against the settings later)."""
    found = {}
    for path in paths:
        for record in json.loads(Path(path).read_text(encoding="utf-8")):
            found[(record["model"], record["split"], record["seed"])] = {**record, "reused_from": str(path)}
    return found


def run_job_child(args) -> int:
    """`--run-job MODEL:SPLIT:SEED`: one FusionModel job in this (child) process."""
    model, split, seed = args.run_job.split(":")
    torch.set_num_threads(args.threads or 1)
    data = BenchData.load(args.dataset)
    run_fusion_job(model, split, int(seed), args, data, args.workdir, machine_info())
    return 0


def report_job(job) -> None:
    for record in job.records:
        metrics = record["metrics"]
        valid = report.best_validation(record)
        say(f"  done {record['model']} {record['split']} seed {record['seed']}: test ndcg@10 {metrics['ndcg@10']:.4f}, "
            f"recall@100 {metrics['recall@100']:.4f}"
            + (f", best validation ndcg@10 {valid:.4f}" if valid is not None else "")
            + f", training {record['train_cpu_seconds'] or 0:.0f} CPU-s / {record['train_wall_seconds'] or 0:.0f} s")


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_job:
        sys.exit(run_job_child(args))
    if SNAPSHOT_ENV not in os.environ and not args.no_snapshot:
        code = run_from_snapshot(resolved_argv(argv, args))
        if code:
            sys.exit(code)
        return json.loads(output_path(args).read_text(encoding="utf-8"))
    if runs_peers(args):
        args.peer_python = peer_python(args)
    output = output_path(args)
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_quality-")) if own_workdir else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args.text_cache_dir = (args.text_cache_dir or workdir / "text-cache").resolve()
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets-cache")  # private Arrow cache, kept with workdir
    import datasets

    datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])
    datasets.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    reused = reused_records(args.reuse)
    try:
        return run(args, workdir, output, machine, reused, started)
    except PeerMismatch as error:
        sys.exit(f"error: {error}")
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, workdir: Path, output: Path, machine: dict, reused: dict, started: float) -> list[dict]:
    dataset = prepare(args, workdir)
    data = BenchData.load(dataset)
    num_test = {split: len(data.examples(split, "test")) for split in args.splits}
    say(f"dataset: {dataset} ({len(data.catalog)} movies, test examples {num_test}; {time.perf_counter() - started:.0f}s)")

    records: dict[tuple, dict] = {}
    pending = []
    for job in plan(args, workdir, data, machine):
        done = finished_records(workdir, job.outputs, job.split, job.seed, config=job.config,
                                num_test=num_test[job.split], reused=reused)
        if done is None:
            pending.append(job)
        else:
            records.update({(r["model"], r["split"], r["seed"]): r for r in done})
    say(f"{len(records)} records of child jobs finished in {workdir / 'records'} or reused; {len(pending)} child jobs to run")
    if args.report_only and pending:
        say(f"--report-only: not run, so not in the report: {', '.join(job.name for job in pending)}")
        pending = []

    timing_path = workdir / "text_cache.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    built_now = False
    if any(job.model in ("fusion_content", "fusion_full") for job in pending) or "content_knn" in args.models:
        measured = build_text_cache_timed(data, args.text_cache_dir, text_tokens(args))
        if measured["texts_encoded"] or timing is None:
            timing, built_now = measured, bool(measured["texts_encoded"])
            atomic_write_text(timing_path, json.dumps(timing) + "\n")
    say(text_cache_line(timing, built_now=built_now))
    if "content_knn" in args.models:
        data.attach_text(args.text_cache_dir, text_tokens(args))

    for split in args.splits:
        for name in (m for m in BASELINES if m in args.models):
            seeds = []
            for seed in args.seeds:
                done = finished_records(workdir, (name,), split, seed, config=baseline_config(name, split, seed, args),
                                        num_test=num_test[split], reused=reused)
                if done is None:
                    seeds.append(seed)
                else:
                    records[(name, split, seed)] = done[0]
            if seeds:
                for record in baseline_records(name, split, seeds, data, args, machine):
                    write_record(workdir, record)
                    records[(name, split, record["seed"])] = record
                say(f"  {name} {split}: test ndcg@10 "
                    f"{[round(records[(name, split, s)]['metrics']['ndcg@10'], 4) for s in args.seeds]}")

    failed = run_children(pending, parallel=args.jobs, workdir=workdir, report=report_job)
    for job in pending:
        records.update({(r["model"], r["split"], r["seed"]): r for r in job.records})
    ordered = [records[key] for key in sorted(records, key=lambda k: (report.MODELS.index(k[0]), k[1], k[2]))]
    write_records(ordered, output)
    if failed:
        sys.exit(f"error: {len(failed)} job(s) failed: {', '.join(job.name for job in failed)}; the finished records "
                 f"are in {output}" + (f" and {workdir / 'records'} (rerun with --workdir {workdir} to resume)"
                                       if args.workdir else ""))

    lines = summary_lines(args, data, ordered, timing, built_now=built_now)
    lines.append(f"total {(time.perf_counter() - started) / 60:.1f} min; wrote {output}")
    text = "\n".join(lines)
    say("\n" + text)
    atomic_write_text(output.with_name(f"{output.stem}_report.txt"), text + "\n")
    return ordered


def test_users(examples) -> np.ndarray:
    """Each example's user: the bootstrap's clusters (cold_items has several test events per user)."""
    return examples.rows.scalars["user_index"][examples.example_rows]


def previous_timestamps(examples) -> np.ndarray:
    """The time of the event right before each example's target in its user's row (its validation event under
    leave_one_out, whose test target is never a row's first event)."""
    flat = examples.rows.offsets[examples.example_rows] + examples.positions - 1
    return examples.rows.flat["timestamp"][flat]


def summary_lines(args, data: BenchData, records: list[dict], timing: dict | None, *, built_now: bool) -> list[str]:
    tail = tied = target_counts = None
    if "leave_one_out" in args.splits:
        test = data.examples("leave_one_out", "test")
        target_counts = data.train_counts("leave_one_out")[test.targets]
        tail = report.tail_mask(data.train_counts("leave_one_out"), test.targets)
        tied = report.tied_with_previous(test.target_timestamps, previous_timestamps(test))
    users = {split: test_users(data.examples(split, "test")) for split in args.splits}
    context = report.Context(splits=tuple(args.splits), tail=tail, num_cold_candidates=int(data.cold.sum()),
                             tied=tied, users=users)
    lines = [
        f"test metrics, mean ± half min-max range over seeds {args.seeds} (full ranking, every movie rated before "
        f"the target excluded; cold_items ranks among the {context.num_cold_candidates} cold movies); train CPU-s: "
        "the training process's CPU-seconds, validation included",
        report.test_table(records, context),
        "(rating reference: predicting the split's mean training rating gives test RMSE "
        + ", ".join(f"{split} {rmse_constant(data, split):.4f}" for split in args.splits) + ")",
        text_cache_line(timing, built_now=built_now),
        "",
        report.length_table(records, context),
        "",
    ]
    if tail is not None:
        lines += [report.head_tail_table(records, tail), "", report.ties_table(records, tied), "",
                  report.popularity_table(records, target_counts, tied), ""]
    return lines + report.target_lines(records, context)


if __name__ == "__main__":
    main()
