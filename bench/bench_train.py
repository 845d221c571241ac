"""Training throughput on this machine: sequences/s and target positions/s for the default model size (the
train_accelerate.py defaults), with the frozen-encoder text cache on (cached token states) and off (the encoder
re-run on every batch's candidate movies: `catalog.text_states = None`).

    python bench/bench_train.py [--dataset DIR] [--steps 8] [--uncached-steps 2]

Without --dataset it prepares the built-in synthetic dataset in a temporary folder. Writes
bench/results/train_throughput.json as a list of {"pipeline", "metric", "value", "unit"}. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fusionrec.data.catalog import load_catalog  # noqa: E402
from fusionrec.data.collator import TrainingCollator, movie_frequency  # noqa: E402
from fusionrec.data.loading import load_feature_spec, load_tables  # noqa: E402
from fusionrec.data.sequences import read_sequences, train_sequence, training_windows  # noqa: E402
from fusionrec.io import atomic_write_text  # noqa: E402
from fusionrec.training.optimizer import build_optimizer  # noqa: E402
from fusionrec.training.options import build_config, parse_args  # noqa: E402
from modeling_fusionrec import FusionModel  # noqa: E402


def measure(model, optimizer, collator, windows, *, batch_size: int, steps: int, warmup: int = 1) -> dict:
    order = np.random.default_rng(0).permutation(len(windows))
    sequences = targets = 0
    seconds = 0.0
    for step in range(warmup + steps):
        chunk = [windows[i] for i in order[(step * batch_size) % len(windows):][:batch_size]]
        start = time.perf_counter()
        batch = collator(chunk, batch_key=step)
        out = model(batch["history_movie_indices"], batch["history_ratings"], batch["history_timestamps"],
                    batch["history_mask"], movie_inputs=batch["movie_inputs"], target_mask=batch["target_mask"],
                    user_indices=batch["user_indices"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            seconds += time.perf_counter() - start
            sequences += len(chunk)
            targets += int(batch["target_mask"].sum())
    return {"sequences_per_second": sequences / seconds, "targets_per_second": targets / seconds, "seconds_per_step": seconds / steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="prepared dataset folder (default: synthetic, made in a temp dir)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps with the text cache")
    parser.add_argument("--uncached-steps", type=int, default=2, help="timed steps re-running the encoder per batch")
    parser.add_argument("--text-cache-dir", type=Path, default=None, help="text cache root")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "train_throughput.json")
    options = parser.parse_args(argv)

    dataset = options.dataset
    if dataset is None:
        dataset = Path(tempfile.mkdtemp(prefix="fusionrec-bench-")) / "synthetic"
        subprocess.run([sys.executable, str(REPO_ROOT / "prepare_dataset.py"), "--source", "synthetic", "--output",
                        str(dataset), "--quiet"], check=True, capture_output=True)
    args = parse_args(["--dataset", str(dataset), "--output-dir", "unused"])
    args._resume_dir = None
    spec = load_feature_spec(dataset)
    config = build_config(args, spec)
    catalog, _ = load_catalog(dataset, config, cache_root=options.text_cache_dir, show_progress=True)
    rows = read_sequences(load_tables(dataset)[1])
    cold = catalog.cold_item.numpy()
    train = [s for s in (train_sequence(r, "leave_one_out", cold) for r in rows) if len(s.movies)]
    windows = training_windows(train, window=config.max_history_length)
    collator = TrainingCollator(catalog, config=config, movie_frequency=movie_frequency(train, len(catalog)),
                                negative_pool=np.arange(len(catalog)), num_negatives=args.num_negatives, seed=0)
    torch.manual_seed(0)
    model = FusionModel(config).train()
    optimizer = build_optimizer(model, args)
    label = (f"{spec.get('source')} dataset ({len(catalog)} movies), hidden {config.hidden_size}, batch {args.batch_size}, "
             f"window {config.max_history_length}, {config.text_encoder_name_or_path} ({config.text_max_length} tokens), "
             f"{torch.get_num_threads()} threads")
    print(label)
    cached = measure(model, optimizer, collator, windows, batch_size=args.batch_size, steps=options.steps)
    states, lengths = catalog.text_states, catalog.text_lengths
    catalog.text_states = None  # the encoder now runs inside the model on every batch's movies
    try:
        uncached = measure(model, optimizer, collator, windows, batch_size=args.batch_size, steps=options.uncached_steps)
    finally:
        catalog.attach_text_cache(states, lengths)

    results = []
    for pipeline, numbers in (("text cache on", cached), ("text cache off (encoder per batch)", uncached)):
        results.append({"pipeline": pipeline, "metric": "sequences_per_second", "value": round(numbers["sequences_per_second"], 3), "unit": "sequences/s"})
        results.append({"pipeline": pipeline, "metric": "targets_per_second", "value": round(numbers["targets_per_second"], 1), "unit": "target positions/s"})
        results.append({"pipeline": pipeline, "metric": "seconds_per_step", "value": round(numbers["seconds_per_step"], 3), "unit": "s"})
    print(f"{'pipeline':38s} {'sequences/s':>12s} {'targets/s':>12s} {'s/step':>8s}")
    for pipeline, numbers in (("text cache on", cached), ("text cache off (encoder per batch)", uncached)):
        print(f"{pipeline:38s} {numbers['sequences_per_second']:12.2f} {numbers['targets_per_second']:12.1f} "
              f"{numbers['seconds_per_step']:8.2f}")
    print(f"speed-up from the cache: {cached['targets_per_second'] / uncached['targets_per_second']:.1f}x")
    atomic_write_text(options.output, json.dumps(results, indent=1) + "\n")
    print(f"wrote {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
