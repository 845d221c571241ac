"""What a CPU budget buys at the full Kaggle size (issue 23, target 5): validation NDCG@10 against CPU-seconds.

    python bench/bench_full_scale.py --workdir /tmp/fs26 --dataset-only      # once: the 26M set and its text cache
    python bench/bench_time_to_quality.py --workdir /tmp/fs26                 # trains (resumable), then reports
    python bench/bench_time_to_quality.py --workdir /tmp/fs26 --report-only   # the curve so far

Trains train_accelerate.py's defaults (hidden 64, batch 64, MiniLM states of 32 tokens; the recorded hour ran at the
50-step windows those defaults had then) on one
thread for --max-steps (cosine schedule over them), validating on 5,000 users and checkpointing every --eval-steps;
a killed run resumes from its newest checkpoint. The report reads the training history (the newest checkpoint's, or
the finished run's), so it can be written while the run goes on. It adds the projected epoch time on one GPU from two
measurements on this machine: the input pipeline's windows per second (full_scale.json: the gathered path with
DataLoader workers, which keep the gathering off the process that drives the GPU) and the FLOPs of a training step
(train_step_26m.json); the GPU's own rate is an assumption, stated in the output.

Writes bench/results/full_scale_time_to_quality.json atomically and prints the curve.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from fusionrec.io import atomic_write_text  # noqa: E402

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
WINDOWS_26M = 650_680  # training windows of the 26M set at 50-step windows (train_summary.json's num_windows)
# A sustained rate for this model's small (64-wide) bf16 matmuls on one H100-class GPU: an assumption, ~5% of peak.
ASSUMED_GPU_TFLOPS = 50.0


def train(workdir: Path, run_dir: Path, *, max_steps: int, eval_steps: int, eval_users: int) -> None:
    command = [
        sys.executable, str(ROOT / "train_accelerate.py"), "--dataset", str(workdir / "dataset"), "--output-dir",
        str(run_dir), "--split", "leave_one_out", "--text-encoder", ENCODER, "--text-cache-dir", str(workdir / "text-cache"),
        "--max-steps", str(max_steps), "--eval-steps", str(eval_steps), "--max-eval-users", str(eval_users),
        "--patience", "0", "--checkpointing-steps", str(eval_steps), "--no-progress", "--cpu",
    ]  # fmt: skip
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        command += ["--resume-from-checkpoint", "latest"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(workdir / "hf-datasets-cache"))
    subprocess.run(command, env=env, check=True, cwd=ROOT)


def training_state(run_dir: Path) -> dict:
    """The finished run's summary, else the newest checkpoint's trainer state (history with CPU-seconds)."""
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    if not checkpoints:
        raise SystemExit(f"error: no checkpoint in {run_dir / 'checkpoints'} yet; run without --report-only first.")
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())


def curve(history: list[dict]) -> list[dict]:
    return [{"step": h["step"], "cpu_seconds": round(h["cpu_seconds"], 1), "ndcg@10": round(h["ndcg@10"], 5),
             "recall@10": h.get("recall@10")} for h in history if "ndcg@10" in h]  # fmt: skip


def gpu_projection(windows_per_epoch: int, batch_size: int) -> dict:
    """Epoch time on one GPU = max(input path, arithmetic): both measured here, the GPU's rate assumed."""
    step = json.loads((BENCH / "results" / "train_step_26m.json").read_text())["results"]["after, no"]
    pipeline = json.loads((BENCH / "results" / "full_scale.json").read_text())
    rates = {f"{stage['name']}: {path}": r["windows_per_s"] for stage in pipeline["stages"]
             for path, r in stage.get("detail", {}).items()
             if isinstance(r, dict) and "windows_per_s" in r and "gathered" in path and "0 workers" not in path}  # fmt: skip
    best_path, windows_per_s = max(rates.items(), key=lambda item: item[1])
    flops_per_epoch = step["flops_per_step"] / step["batch_size"] * windows_per_epoch
    input_s, compute_s = windows_per_epoch / windows_per_s, flops_per_epoch / (ASSUMED_GPU_TFLOPS * 1e12)
    return {
        "windows_per_epoch": windows_per_epoch, "batch_size": batch_size,
        "input_pipeline": {"path": best_path, "windows_per_s": windows_per_s, "epoch_seconds": round(input_s, 1)},
        "arithmetic": {"gflop_per_window": round(step["flops_per_step"] / step["batch_size"] / 1e9, 3),
                       "tflop_per_epoch": round(flops_per_epoch / 1e12, 1),
                       "assumed_sustained_tflops": ASSUMED_GPU_TFLOPS, "epoch_seconds": round(compute_s, 1)},
        "projected_epoch_seconds": round(max(input_s, compute_s), 1),
        "bound_by": "input pipeline" if input_s >= compute_s else "arithmetic",
    }  # fmt: skip


def report(run_dir: Path, output: Path) -> dict:
    state = training_state(run_dir)
    points = curve(state["history"])
    windows = state.get("num_windows", WINDOWS_26M)
    cpu_per_step = points[-1]["cpu_seconds"] / points[-1]["step"] if points else None
    result = {
        "benchmark": "full_scale_time_to_quality",
        "run": str(run_dir),
        "settings": "train_accelerate.py defaults, MiniLM text (32 tokens), one torch thread, cosine over --max-steps; "
        "validation: NDCG@10 of 5,000 leave_one_out users' validation events over the whole catalog",
        "data": "bench_full_scale.py's 26M synthetic ratings: Zipf-like popularity, no other structure, so the curve "
        "shows how fast the model learns popularity at this size, not what it would learn from real tastes",
        "global_step": state["global_step"],
        "cpu_seconds": round(state["cpu_seconds"], 1),
        "cpu_seconds_per_step_with_validation": cpu_per_step and round(cpu_per_step, 3),
        "epochs": round(state["global_step"] * 64 / windows, 3),
        "curve": points,
        "gpu_projection": gpu_projection(windows, 64),
        "written_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    return result


def format_curve(result: dict) -> str:
    lines = [f"{'step':>6} {'CPU-s':>8} {'valid NDCG@10':>14}"]
    lines += [f"{p['step']:>6} {p['cpu_seconds']:>8.0f} {p['ndcg@10']:>14.4f}" for p in result["curve"]]
    gpu = result["gpu_projection"]
    lines.append(f"{result['global_step']} steps = {result['epochs']} epochs in {result['cpu_seconds']:.0f} CPU-s; "
                 f"one GPU epoch projected at {gpu['projected_epoch_seconds']:.0f} s ({gpu['bound_by']}: input "
                 f"{gpu['input_pipeline']['epoch_seconds']:.0f} s at {gpu['input_pipeline']['windows_per_s']:,.0f} "
                 f"windows/s; arithmetic {gpu['arithmetic']['epoch_seconds']:.1f} s at an assumed "
                 f"{gpu['arithmetic']['assumed_sustained_tflops']:g} TFLOP/s)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workdir", type=Path, required=True, help="bench_full_scale.py --dataset-only's folder")
    parser.add_argument("--run-dir", type=Path, help="training output (default WORKDIR/time-to-quality)")
    parser.add_argument("--max-steps", type=int, default=6600, help="about one CPU-hour on this machine")
    parser.add_argument("--eval-steps", type=int, default=330)
    parser.add_argument("--eval-users", type=int, default=5000)
    parser.add_argument("--report-only", action="store_true", help="report the newest checkpoint's curve, no training")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "full_scale_time_to_quality.json")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or args.workdir / "time-to-quality"
    if not args.report_only:
        train(args.workdir, run_dir, max_steps=args.max_steps, eval_steps=args.eval_steps, eval_users=args.eval_users)
    print(format_curve(report(run_dir, args.output)))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
