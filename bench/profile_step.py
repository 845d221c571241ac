"""Where one training step's time goes, with train_accelerate.py's defaults on the real Kaggle sample.

    python bench/profile_step.py [--data-dir DIR | --dataset PREPARED] [--threads 1] [--steps 20] [train options...]

The data, config, model and collator come from the training loop's own functions (fusionrec/training/), so the step
is the one `train_accelerate.py --dataset DATA` runs. Forward time is split by timing each part's methods (text pooling by the
Perceiver, the rest of the movie tower, the user tower, the rating head, the loss as the remainder); backward and the
optimizer step are timed whole. A second pass without text shows the share of the text path in backward too. Writes
bench/results/profile_step.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from accelerate import Accelerator  # noqa: E402
from sample_data import DEFAULT_SAMPLE_DIR, require_sample_dir  # noqa: E402

from fusionrec.data.collator import TrainingCollator  # noqa: E402
from fusionrec.data.loading import load_feature_spec  # noqa: E402
from fusionrec.data.prepare import prepare  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from fusionrec.training.batches import load_training_data  # noqa: E402
from fusionrec.training.options import build_config, parse_args  # noqa: E402
from modeling_fusionrec import FusionModel  # noqa: E402

PARTS = {  # label -> the methods (module path, name) whose wall time it sums
    "text pooling (Perceiver)": [("movie_tower.text_resampler", "forward")],
    "movie tower": [("movie_tower", "forward")],
    "user tower": [("user_tower", "encode"), ("user_tower", "read_out")],
    "rating head": [("rating_head", "forward")],
}


def time_parts(model: torch.nn.Module, seconds: dict[str, float]) -> None:
    """Wrap each part's methods on this instance so that their wall time adds up in `seconds`."""

    def timed(method, label):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started

        return wrapper

    for label, methods in PARTS.items():
        for path, name in methods:
            module = model.get_submodule(path)
            setattr(module, name, timed(getattr(module, name), label))


def profile(train_argv: list[str], *, steps: int, warmup: int = 3) -> dict:
    args = parse_args(train_argv)
    args._resume_dir = None  # a fresh run, as train() resolves it
    accelerator = Accelerator(cpu=True)
    config = build_config(args, load_feature_spec(args.dataset))
    data = load_training_data(args, config, accelerator)
    model = FusionModel(config)
    model.set_movie_counts(data.frequency)
    model.train()
    collator = TrainingCollator(data.catalog, config=config, movie_frequency=data.frequency,
                                negative_pool=data.negative_pool, num_negatives=args.num_negatives, seed=args.seed)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    seconds: dict[str, float] = defaultdict(float)
    if config.use_text:
        time_parts(model, seconds)
    candidates = 0
    for step in range(warmup + steps):
        if step == warmup:
            seconds.clear()
            candidates = 0
        started = time.perf_counter()
        picked = torch.randperm(len(data.windows), generator=generator)[: args.batch_size].tolist()
        batch = collator([data.windows[i] for i in picked])
        seconds["collate"] += time.perf_counter() - started
        candidates += len(batch["movie_inputs"]["movie_indices"])
        started = time.perf_counter()
        out = model(batch["history_movie_indices"], batch["history_ratings"], batch["history_timestamps"],
                    batch["history_mask"], movie_inputs=batch["movie_inputs"], target_mask=batch["target_mask"],
                    user_indices=batch["user_indices"])  # fmt: skip
        seconds["forward"] += time.perf_counter() - started
        started = time.perf_counter()
        out.loss.backward()
        seconds["backward"] += time.perf_counter() - started
        started = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds["optimizer"] += time.perf_counter() - started
    per_step = {name: value / steps for name, value in seconds.items()}
    return {"batch_size": args.batch_size, "candidates_per_step": candidates / steps, "use_text": config.use_text,
            "seconds_per_step": per_step}  # fmt: skip


def format_table(full: dict, ids: dict) -> str:
    f, i = full["seconds_per_step"], ids["seconds_per_step"]
    total = sum(f[k] for k in ("collate", "forward", "backward", "optimizer"))
    rows = [
        ("collate (windows, negatives, features)", f["collate"]),
        ("forward: text pooling (Perceiver over cached token states)", f["text pooling (Perceiver)"]),
        ("forward: rest of the movie tower (ids, content, fusion MLP)", f["movie tower"] - f["text pooling (Perceiver)"]),
        ("forward: user tower", f["user tower"]),
        ("forward: rating head", f["rating head"]),
        ("forward: loss and the rest", f["forward"] - f["movie tower"] - f["user tower"] - f["rating head"]),
        ("backward", f["backward"]),
        ("optimizer step", f["optimizer"]),
    ]
    lines = [f"one training step, batch {full['batch_size']}, {full['candidates_per_step']:.0f} candidate movies per step",
             f"{'part':<62} {'ms':>8} {'share':>7}"]  # fmt: skip
    lines += [f"{name:<62} {value * 1000:>8.1f} {value / total:>7.1%}" for name, value in rows]
    lines.append(f"{'total':<62} {total * 1000:>8.1f}")
    ids_total = sum(i[k] for k in ("collate", "forward", "backward", "optimizer"))
    lines.append(f"without text (--no-text): {ids_total * 1000:.1f} ms per step, backward {i['backward'] * 1000:.1f} ms "
                 f"(with text {f['backward'] * 1000:.1f} ms)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_SAMPLE_DIR, help="raw Kaggle sample")
    parser.add_argument("--dataset", type=Path, help="an already prepared folder (skips preparation)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the quality bench uses 1)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "profile_step.json")
    args, train_options = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="profile_step-"))
    dataset = args.dataset
    if dataset is None:
        dataset = workdir / "dataset"
        prepare("tmdb", dataset, require_sample_dir(args.data_dir))
    base = ["--dataset", str(dataset), "--output-dir", str(workdir / "out"), *train_options]
    full = profile(base, steps=args.steps)
    ids = profile([*base, "--no-text"], steps=args.steps)
    table = format_table(full, ids)
    print(table)
    result = {"benchmark": "profile_step", "threads": args.threads, "train_options": train_options,
              "full": full, "no_text": ids, "table": table}  # fmt: skip
    atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
