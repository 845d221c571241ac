"""The CPU-side pieces of the full-scale benchmark and the GPU check: the generated Kaggle-schema set gives every
movie a text, the stage runner measures a child's process tree, gpu_check.sh prints its plan without CUDA, and the
GPU report compares runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench"))

import bench_full_scale  # noqa: E402
import gpu_report  # noqa: E402

from fusionrec.data.prepare import prepare  # noqa: E402


def test_the_generated_full_scale_set_gives_every_movie_a_text(tmp_path):
    bench_full_scale.generate_raw(tmp_path / "raw", ratings=3_000, users=60, movies=150)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "credits.csv", "keywords.csv", "links.csv", "movies_metadata.csv", "ratings.csv"
    ]  # fmt: skip
    summary = prepare("tmdb", tmp_path / "dataset", tmp_path / "raw", ratings="ratings.csv")
    written = len((tmp_path / "raw" / "ratings.csv").read_text().splitlines()) - 1
    assert summary.counts["ratings_kept"] == written and written > 2_900 and summary.num_users == 61
    import pyarrow.parquet as pq

    movies = pq.read_table(tmp_path / "dataset" / "movies" / "train-00000-of-00001.parquet").to_pydict()
    with_metadata = [text for text, known in zip(movies["text"], movies["has_metadata"], strict=True) if known]
    assert len(with_metadata) >= 0.9 * len(movies["text"])
    assert all("Genres:" in text and "Cast:" in text and "Director:" in text for text in with_metadata)


def test_a_stage_is_measured_over_its_process_tree(tmp_path):
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'x = bytearray(300_000_000); import time; time.sleep(1.5)'])"
    stage, launched = bench_full_scale.run_stage("child", [sys.executable, "-c", code], env=dict(os.environ), log_dir=tmp_path)
    assert stage.peak_rss_tree_bytes > 300_000_000 and stage.peak_rss_process_bytes > 300_000_000
    assert 300_000_000 < stage.peak_pss_tree_bytes <= stage.peak_rss_tree_bytes  # the child's pages are its own
    assert stage.wall_s >= 1.5 and launched > 0 and (tmp_path / "child.log").is_file()
    with pytest.raises(SystemExit, match="stage broken failed"):
        bench_full_scale.run_stage("broken", [sys.executable, "-c", "raise SystemExit(3)"], env=dict(os.environ), log_dir=tmp_path)


def gpu_check(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), *argv], capture_output=True, text=True, env=env)


def test_gpu_check_prints_its_plan_without_cuda():
    plan = gpu_check("--dry-run")
    assert plan.returncode == 0, plan.stderr
    steps = [line for line in plan.stdout.splitlines() if line.startswith("+ ")]
    assert any("pytest -q -m cuda" in line for line in steps)
    assert sum("--mixed-precision bf16" in line for line in steps) == 3  # sample, full, 2 GPUs
    assert sum("--cpu" in line and "--mixed-precision no" in line for line in steps) == 2  # their CPU baselines
    gpu_runs = [line for line in steps if "--mixed-precision bf16" in line]
    assert all("--dataloader-num-workers 2" in line and "--compile" not in line for line in gpu_runs)
    assert not any("--dataloader-num-workers" in line for line in steps if "--cpu" in line)
    compiled = [line for line in gpu_check("--dry-run", "--compile").stdout.splitlines() if line.startswith("+ ")]
    assert sum("--compile" in line for line in compiled) == 3 and not any("--compile" in line for line in compiled if "--cpu" in line)
    assert any("--multi_gpu --num_processes 2" in line for line in steps)
    assert any("bench_full_scale.py --dataset-only --ratings 26024289" in line for line in steps)
    assert "gpu_report.py" in steps[-1] and "sample-cpu=" in steps[-1] and "full-gpu=" in steps[-1]
    only = gpu_check("--dry-run", "--part", "sample", "--steps", "50")
    lines = [line for line in only.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 3 and all("--max-steps 50" in line for line in lines[:2])
    bad = gpu_check("--part", "everything")
    assert bad.returncode == 2 and "unknown --part everything" in bad.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_gpu_check_without_cuda_stops_with_one_line():
    result = gpu_check("--part", "tests")
    assert result.returncode == 2 and result.stderr.strip().endswith("--dry-run prints the plan")


def summary(device: str, *, sequences: float, ndcg: float, processes: int = 1, peak: int | None = None) -> dict:
    history = [{"step": 10 * i, "train/loss": 5.0 - i, "throughput/sequences_per_second": sequences * (0.5 if i == 1 else 1),
                "throughput/targets_per_second": 40 * sequences} for i in range(1, 5)]  # fmt: skip
    result = {"global_step": 40, "history": history, "last_validation": {"ndcg@10": ndcg}, "batch_size": 32,
              "num_processes": processes, "device": device, "mixed_precision": "no" if device == "cpu" else "bf16",
              "num_windows": 650_680, "peak_rss_bytes": 5 * 2**29}  # fmt: skip
    return result | ({"peak_gpu_memory_bytes": peak} if peak else {})


def test_gpu_report_compares_each_gpu_run_with_its_cpu_baseline(tmp_path, capsys):
    files = {
        "sample-gpu": summary("cuda:0", sequences=3200, ndcg=0.051, peak=3 * 2**30),
        "sample-cpu": summary("cpu", sequences=64, ndcg=0.050),
        "sample-2gpu": summary("cuda:0", sequences=5120, ndcg=0.049, processes=2, peak=2**30),
    }
    argv = []
    for label, content in files.items():
        (tmp_path / f"{label}.json").write_text(json.dumps(content))
        argv.append(f"{label}={tmp_path / label}.json")
    argv.append(f"full-gpu={tmp_path / 'missing.json'}")
    assert gpu_report.main([*argv, "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {row["run"]: row for row in report["runs"]}
    assert rows["sample-gpu"]["steps_per_s"] == pytest.approx(100.0) and rows["sample-cpu"]["steps_per_s"] == pytest.approx(2.0)
    assert rows["sample-2gpu"]["steps_per_s"] == pytest.approx(80.0)  # 5120 windows/s over 2 x 32 per step
    assert rows["sample-gpu"]["peak_gpu_gib"] == pytest.approx(3.0) and rows["sample-cpu"]["peak_gpu_gib"] is None
    assert rows["sample-gpu"]["windows_per_s"] == pytest.approx(3200.0) and rows["sample-gpu"]["peak_host_gib"] == pytest.approx(2.5)
    assert rows["sample-gpu"]["epoch_minutes"] == pytest.approx(650_680 / 3200 / 60)  # the run's windows at its rate
    speedups = {c["run"]: c for c in report["comparisons"]}
    assert speedups["sample-gpu"]["speedup_steps"] == pytest.approx(50.0)
    assert speedups["sample-2gpu"]["ndcg@10_difference"] == pytest.approx(-0.001)
    captured = capsys.readouterr()
    assert "full-gpu: no" in captured.err and "sample-gpu vs sample-cpu: 50.0x" in captured.out


def test_time_to_quality_reports_the_newest_checkpoints_curve_and_a_gpu_projection(tmp_path):
    import bench_time_to_quality

    history = [{"step": 10, "train/loss": 9.0}, {"step": 330, "cpu_seconds": 200.04, "ndcg@10": 0.08664, "recall@10": 0.13},
               {"step": 660, "cpu_seconds": 404.0, "ndcg@10": 0.08767, "recall@10": 0.14}]  # fmt: skip
    for step, upto in ((330, 2), (660, 3)):
        folder = tmp_path / "run" / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        state = {"global_step": step, "cpu_seconds": history[upto - 1]["cpu_seconds"] + 5, "history": history[:upto]}
        (folder / "trainer_state.json").write_text(json.dumps(state))
    result = bench_time_to_quality.report(tmp_path / "run", tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == result
    assert [(p["step"], p["ndcg@10"]) for p in result["curve"]] == [(330, 0.08664), (660, 0.08767)]
    assert result["global_step"] == 660 and result["cpu_seconds"] == 409.0
    gpu = result["gpu_projection"]
    assert gpu["projected_epoch_seconds"] == max(gpu["input_pipeline"]["epoch_seconds"], gpu["arithmetic"]["epoch_seconds"])
    finished = {"global_step": 990, "cpu_seconds": 600.0, "num_windows": 6_400, "history": history}
    (tmp_path / "run" / "train_summary.json").write_text(json.dumps(finished))  # a finished run's summary wins
    assert bench_time_to_quality.report(tmp_path / "run", tmp_path / "out.json")["epochs"] == 990 * 64 / 6_400
    assert gpu["input_pipeline"]["windows_per_s"] > 6000 and "workers" in gpu["input_pipeline"]["path"]  # full_scale.json
