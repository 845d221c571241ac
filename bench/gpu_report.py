"""The table of bench/gpu_check.sh: one row per training run from its train_summary.json, and each GPU run against the
CPU run of the same data and steps.

    python bench/gpu_report.py --output gpu_check.json sample-gpu=RUN/train_summary.json sample-cpu=RUN2/train_summary.json

A label ending in -cpu is the baseline of the labels that share its prefix (sample-gpu, sample-2gpu -> sample-cpu).
windows/s, steps/s and targets/s are the medians of the logged intervals after the first (warm-up); the epoch time is
the run's training windows at that windows/s (an epoch at 26M: 650,680 windows); validation NDCG@10 is the run's
final full-ranking validation; peak GPU memory is the main process's torch.cuda.max_memory_allocated, peak host
memory its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusionrec.io import atomic_write_text  # noqa: E402


def median_after_warmup(values: list[float]) -> float | None:
    values = sorted(values[1:] or values)
    return values[len(values) // 2] if values else None


def run_row(label: str, summary: dict) -> dict:
    """One training run's figures from its train_summary.json."""
    logged = [entry for entry in summary["history"] if "throughput/sequences_per_second" in entry]
    windows = median_after_warmup([entry["throughput/sequences_per_second"] for entry in logged])
    per_step = summary.get("batch_size", 32) * summary.get("num_processes", 1)
    losses = [entry["train/loss"] for entry in logged]
    return {
        "run": label,
        "device": summary.get("device", "?"),
        "precision": summary.get("mixed_precision", "?"),
        "processes": summary.get("num_processes", 1),
        "steps": summary["global_step"],
        "windows_per_s": windows,
        "steps_per_s": None if windows is None else windows / per_step,
        "epoch_minutes": None if not windows or "num_windows" not in summary else summary["num_windows"] / windows / 60,
        "targets_per_s": median_after_warmup([entry["throughput/targets_per_second"] for entry in logged]),
        "peak_gpu_gib": summary["peak_gpu_memory_bytes"] / 2**30 if "peak_gpu_memory_bytes" in summary else None,
        "peak_host_gib": summary["peak_rss_bytes"] / 2**30 if summary.get("peak_rss_bytes") else None,
        "validation_ndcg@10": summary.get("last_validation", {}).get("ndcg@10"),
        "final_loss": losses[-1] if losses else None,
        "seconds_to_first_step": summary.get("seconds_to_first_step"),
    }


def compare(rows: list[dict]) -> list[dict]:
    """Each non-CPU run against the `<prefix>-cpu` run."""
    baselines = {row["run"].rsplit("-", 1)[0]: row for row in rows if row["run"].endswith("-cpu")}
    out = []
    for row in rows:
        base = baselines.get(row["run"].rsplit("-", 1)[0])
        if base is None or base is row or not (row["steps_per_s"] and base["steps_per_s"]):
            continue
        ndcg = (row["validation_ndcg@10"], base["validation_ndcg@10"])
        out.append({
            "run": row["run"], "baseline": base["run"], "speedup_steps": row["steps_per_s"] / base["steps_per_s"],
            "ndcg@10_difference": None if None in ndcg else ndcg[0] - ndcg[1],
        })  # fmt: skip
    return out


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(rows: list[dict], comparisons: list[dict]) -> str:
    lines = [f"{'run':<14} {'device':<8} {'prec':<5} {'procs':>5} {'steps':>6} {'windows/s':>10} {'steps/s':>8} "
             f"{'targets/s':>10} {'epoch min':>10} {'peak GPU GiB':>12} {'host GiB':>8} {'val ndcg@10':>11} {'loss':>7}"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['run']:<14} {r['device']:<8} {r['precision']:<5} {r['processes']:>5} {r['steps']:>6} "
            f"{cell(r['windows_per_s'], ',.0f'):>10} {cell(r['steps_per_s'], '.2f'):>8} {cell(r['targets_per_s'], ',.0f'):>10} "
            f"{cell(r['epoch_minutes'], ',.1f'):>10} {cell(r['peak_gpu_gib'], '.2f'):>12} {cell(r['peak_host_gib'], '.2f'):>8} "
            f"{cell(r['validation_ndcg@10'], '.4f'):>11} {cell(r['final_loss'], '.3f'):>7}"
        )
    for c in comparisons:
        lines.append(f"{c['run']} vs {c['baseline']}: {c['speedup_steps']:.1f}x steps/s, validation ndcg@10 "
                     f"difference {cell(c['ndcg@10_difference'], '+.4f')} (same data, steps and seed)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=SUMMARY", help="a label and a train_summary.json")
    parser.add_argument("--output", type=Path, help="write the rows and comparisons as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for item in args.runs:
        label, _, path = item.partition("=")
        if not Path(path).is_file():
            print(f"{label}: no {path} (the run did not finish); left out", file=sys.stderr)
            continue
        rows.append(run_row(label, json.loads(Path(path).read_text())))
    comparisons = compare(rows)
    print(format_report(rows, comparisons))
    if args.output:
        atomic_write_text(args.output, json.dumps({"runs": rows, "comparisons": comparisons}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
