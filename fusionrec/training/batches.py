"""What the training loop reads: the catalog, training windows and validation events of a split, and keyed batches,
so the data order is a pure function of (seed, epoch) and each batch's negatives of (seed, epoch, batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fusionrec.data.catalog import load_catalog
from fusionrec.data.collator import movie_frequency
from fusionrec.data.loading import load_tables
from fusionrec.data.sequences import (
    Sequences,
    evaluation_examples,
    read_sequences,
    subset_examples,
    training_part,
    training_windows,
)


class EpochBatchSampler:
    """Batches of window indices; epoch e's order is a permutation seeded by (seed, e) alone, so any step can be
    reproduced without replaying the run. Yields (epoch, batch_number, window_index) keys. The number of batches
    is a multiple of `num_processes` so every process gets the same count (no padding duplicates)."""

    def __init__(self, num_windows: int, *, batch_size: int, seed: int, num_processes: int = 1) -> None:
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.num_processes = num_processes
        self.drop_last = True
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_windows // self.batch_size // self.num_processes * self.num_processes

    def __iter__(self):
        epoch = self.epoch
        order = torch.randperm(self.num_windows, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for number in range(len(self)):
            chunk = order[number * self.batch_size : (number + 1) * self.batch_size].tolist()
            yield [(epoch, number, index) for index in chunk]


class KeyedWindows(torch.utils.data.Dataset):
    """Training batches by key. The DataLoader hands each batch's (epoch, batch_number, window_index) keys to
    `__getitems__` at once, which gathers the windows by offset from the flat columns and collates them in one call
    (collate_fn: `built_batch`). Negatives are keyed by (epoch, batch_number), so the main process and any number
    of workers build the same batches."""

    def __init__(self, windows: Sequences, collator) -> None:
        self.windows, self.collator = windows, collator

    def __len__(self) -> int:
        return len(self.windows)

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> dict:
        batch_keys = {(epoch, number) for epoch, number, _ in keys}
        if len(batch_keys) != 1:
            raise RuntimeError(f"a batch mixes batch keys {sorted(batch_keys)}")
        indices = torch.tensor([index for _, _, index in keys], dtype=torch.long)
        batch = self.collator(self.windows, indices=indices, batch_key=batch_keys.pop())
        batch["num_windows"] = torch.tensor(len(keys))
        return batch


def built_batch(batch: dict) -> dict:
    """The DataLoader's collate_fn: `KeyedWindows.__getitems__` has built the batch already."""
    return batch


@dataclass
class TrainingData:
    catalog: object
    spec: dict
    windows: Sequences
    validation: object
    negative_pool: np.ndarray
    frequency: np.ndarray
    num_train_targets: int


def load_training_data(args, config, accelerator) -> TrainingData:
    # The main process builds the text cache first (once per movie); the others then read it from disk.
    with accelerator.main_process_first():
        catalog, spec = load_catalog(
            args.dataset,
            config,
            cache_root=args.text_cache_dir,
            show_progress=accelerator.is_main_process and not args.no_progress,
        )
        _, sequences = load_tables(args.dataset)
    rows = read_sequences(sequences)
    catalog = catalog.for_split(args.split)
    cold = catalog.cold_item.numpy()
    train = training_part(rows, args.split, cold).nonempty()
    window = config.max_history_length
    windows = training_windows(train, window=window, stride=min(args.window_stride, window))
    validation = evaluation_examples(rows, args.split, "validation", cold)
    if args.max_eval_users is not None and len(validation) > args.max_eval_users:
        validation = subset_examples(validation, slice(0, args.max_eval_users))
    pool = np.flatnonzero(~cold) if args.split == "cold_items" else np.arange(len(catalog))
    frequency = movie_frequency(train, len(catalog))
    return TrainingData(
        catalog=catalog,
        spec=spec,
        windows=windows,
        validation=validation,
        negative_pool=pool,
        frequency=frequency,
        num_train_targets=windows.num_targets(),
    )
