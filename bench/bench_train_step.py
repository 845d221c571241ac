"""The training step on CPU, before and after: windows per CPU-second, where the time goes, achieved GFLOP/s beside a
matmul roofline measured in the same process (issue 23, target 2).

    python bench/bench_train_step.py --dataset PREPARED [--text-cache-dir DIR] [--baseline-root DIR] \\
        [--threads 1] [--steps 10] [--rounds 2] [--precisions no bf16] [train options...]

Each (code, precision) runs in its own child process, `--rounds` times, alternating, so that both see the same load:
the child builds the data, config, model, optimizer and batches with that code's own training functions
(fusionrec/training/: train_accelerate.py's defaults unless train options say otherwise), so `--baseline-root` (a
checkout of the code before, e.g. `git archive c4d91df | tar -x -C DIR`) runs its own step on identical batches
(same seed, same windows, same negatives). A step is what the training loop does: the frozen text states gathered
for the batch's movies, forward, backward, gradient clipping, AdamW. Timed in CPU-seconds of the process
(`time.process_time`: steadier than wall time on a shared machine), `--steps` steps after 3 warm-up steps; the
median round is reported. The roofline is a 2048 x 2048 float32 (and bfloat16) matmul at the same thread count;
FLOPs are counted by torch's FlopCounterMode over one step (matmuls and attention: what each code executes, so the
rewritten step counts fewer for the same function). Forward parts are timed by wrapping the towers' methods
(CPU-seconds); backward and the optimizer whole. Writes bench/results/train_step.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from fusionrec.io import atomic_write_text  # noqa: E402

CHILD = r"""
import json, os, sys, time
from collections import defaultdict
import torch
from torch.utils.flop_counter import FlopCounterMode
sys.path.insert(0, {root!r})
from accelerate import Accelerator
from fusionrec.data.collator import TrainingCollator
from fusionrec.data.loading import load_feature_spec
from fusionrec.training.batches import load_training_data
from fusionrec.training.optimizer import build_optimizer
from fusionrec.training.options import build_config, parse_args
from modeling_fusionrec import FusionModel

torch.set_num_threads({threads})
precision, steps, warmup = {precision!r}, {steps}, 3

def roofline(dtype, size=2048, repeats=5):
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    started = time.process_time()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.process_time() - started) / 1e9

args = parse_args(["--output-dir", "/tmp/unused-bench-train-step", *{train_argv!r}])
args._resume_dir = None
accelerator = Accelerator(cpu=True)
config = build_config(args, load_feature_spec(args.dataset))
data = load_training_data(args, config, accelerator)
torch.manual_seed(args.seed)
model = FusionModel(config)
model.set_movie_counts(data.frequency)
model.train()
collator = TrainingCollator(data.catalog, config=config, movie_frequency=data.frequency, negative_pool=data.negative_pool,
                            num_negatives=args.num_negatives, seed=args.seed, text_states=False)
optimizer = build_optimizer(model, args)
order = torch.randperm(len(data.windows), generator=torch.Generator().manual_seed(args.seed))
batches = [collator(data.windows, indices=order[i * args.batch_size : (i + 1) * args.batch_size], batch_key=(0, i))
           for i in range(warmup + steps)]
seconds = defaultdict(float)

def timed(module, name, label):
    method = getattr(module, name)
    def wrapper(*a, **k):
        started = time.process_time()
        try:
            return method(*a, **k)
        finally:
            seconds[label] += time.process_time() - started
    setattr(module, name, wrapper)

if config.use_text:
    timed(model.movie_tower.text_resampler, "forward", "forward: text pooling (Perceiver)")
timed(model.movie_tower, "forward", "forward: movie tower")
timed(model.user_tower, "encode", "forward: user tower")
timed(model.user_tower, "read_out", "forward: user tower")

def step(batch, clock=True):
    started = time.process_time()
    inputs = dict(batch["movie_inputs"])
    if config.use_text:
        inputs.update(data.catalog.text_inputs(inputs["movie_indices"]))
    mark = time.process_time(); seconds["text states gathered"] += mark - started
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(batch["history_movie_indices"], batch["history_ratings"], batch["history_timestamps"],
                    batch["history_mask"], movie_inputs=inputs, target_mask=batch["target_mask"],
                    user_indices=batch["user_indices"])
    now = time.process_time(); seconds["forward"] += now - mark; mark = now
    out.loss.backward()
    now = time.process_time(); seconds["backward"] += now - mark; mark = now
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds["optimizer"] += time.process_time() - mark
    return float(out.loss)

for batch in batches[:warmup]:
    step(batch)
with FlopCounterMode(display=False) as counter:
    step(batches[0])
seconds.clear()
load_before = os.getloadavg()[0]
cpu, wall = time.process_time(), time.perf_counter()
losses = [step(batch) for batch in batches[warmup:]]
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
seconds = {{name: value / steps for name, value in seconds.items()}}
tower = seconds.get("forward: movie tower", 0.0) - seconds.get("forward: text pooling (Perceiver)", 0.0)
seconds["forward: movie tower"] = tower
seconds["forward: loss, rating head and the rest"] = seconds["forward"] - tower - seconds.get(
    "forward: text pooling (Perceiver)", 0.0) - seconds.get("forward: user tower", 0.0)
print("RESULT " + json.dumps({{
    "cpu_seconds_per_step": cpu / steps, "wall_seconds_per_step": wall / steps, "parts_cpu_seconds": seconds,
    "flops_per_step": counter.get_total_flops(), "mean_loss": sum(losses) / steps,
    "candidates_per_step": sum(len(b["movie_inputs"]["movie_indices"]) for b in batches[warmup:]) / steps,
    "roofline_gflops": {{"float32": roofline(torch.float32), "bfloat16": roofline(torch.bfloat16)}},
    "batch_size": args.batch_size, "threads": torch.get_num_threads(),
    "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
}}))
"""


def run_child(root: Path, precision: str, *, train_argv: list[str], threads: int, steps: int) -> dict:
    code = CHILD.format(root=str(root), threads=threads, precision=precision, steps=steps, train_argv=train_argv)
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{root} ({precision}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda run: run["cpu_seconds_per_step"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["cpu_seconds_per_step_rounds"] = [round(run["cpu_seconds_per_step"], 4) for run in runs]
    return chosen


def format_table(results: dict[str, dict]) -> str:
    base = results.get("before, no")
    names = list(results)
    parts = list(dict.fromkeys(part for r in results.values() for part in r["parts_cpu_seconds"] if part != "forward"))
    width = 44
    lines = [f"{'CPU ms per step':<{width}}" + "".join(f"{name:>16}" for name in names)]
    for part in parts:
        lines.append(f"{part:<{width}}" + "".join(f"{1000 * r['parts_cpu_seconds'].get(part, 0.0):>16.1f}" for r in results.values()))
    rows = [
        ("total (CPU-s per step x 1000)", lambda r: f"{1000 * r['cpu_seconds_per_step']:.1f}"),
        ("windows per CPU-second", lambda r: f"{r['batch_size'] / r['cpu_seconds_per_step']:.1f}"),
        ("x the code before (fp32)", lambda r: "-" if base is None else f"{base['cpu_seconds_per_step'] / r['cpu_seconds_per_step']:.2f}x"),
        ("candidate movies per step", lambda r: f"{r['candidates_per_step']:.0f}"),
        ("GFLOP per step (executed)", lambda r: f"{r['flops_per_step'] / 1e9:.2f}"),
        ("achieved GFLOP/s (per CPU-second)", lambda r: f"{r['flops_per_step'] / 1e9 / r['cpu_seconds_per_step']:.1f}"),
        ("matmul roofline fp32 / bf16 GFLOP/s", lambda r: "{:.0f} / {:.0f}".format(*r["roofline_gflops"].values())),
        ("mean training loss of the timed steps", lambda r: f"{r['mean_loss']:.5f}"),
        ("load average (start, end)", lambda r: "{:.1f}, {:.1f}".format(*r["load_average"])),
    ]  # fmt: skip
    lines += [f"{label:<{width}}" + "".join(f"{fmt(r):>16}" for r in results.values()) for label, fmt in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument("--baseline-root", type=Path, help="a checkout of the code before, run on the same batches")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (the quality bench uses 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per child, after 3 warm-up steps")
    parser.add_argument("--rounds", type=int, default=2, help="children per (code, precision), alternating")
    parser.add_argument("--precisions", nargs="+", choices=("no", "bf16"), default=["no"],
                        help="bf16: the forward under CPU autocast, as --mixed-precision bf16 trains")  # fmt: skip
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "train_step.json")
    args, train_options = parser.parse_known_args(argv)
    train_argv = ["--dataset", str(args.dataset.resolve()), *train_options]
    codes = ([("before", args.baseline_root.resolve())] if args.baseline_root else []) + [("after", ROOT)]
    runs: dict[str, list[dict]] = {}
    for round_number in range(args.rounds):
        for label, root in codes:
            for precision in args.precisions:
                run = run_child(root, precision, train_argv=train_argv, threads=args.threads, steps=args.steps)
                runs.setdefault(f"{label}, {precision}", []).append(run)
                print(f"round {round_number + 1}: {label}, {precision}: {run['cpu_seconds_per_step']:.3f} CPU-s per "
                      f"step, load {run['load_average'][1]:.1f}", flush=True)  # fmt: skip
    results = {name: median_run(found) for name, found in runs.items()}
    table = format_table(results)
    print(table)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {
        "benchmark": "train_step", "dataset": str(args.dataset), "train_options": train_options, "steps": args.steps,
        "rounds": args.rounds, "commit": commit, "baseline_root": str(args.baseline_root) if args.baseline_root else None,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "results": results, "table": table,
    }  # fmt: skip
    atomic_write_text(args.output, json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
