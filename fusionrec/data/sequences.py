"""Users' rating sequences under each split (PROTOCOL.md): what training may see, training windows, validation and
test examples (the history before each target), histories "as of" a time, and padding to model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fusionrec.errors import DatasetError

SPLITS = ("leave_one_out", "temporal", "cold_items")


@dataclass
class UserSequence:
    """One user's time-ordered ratings; the first `context` steps of a training window are history, not targets."""

    user_index: int
    movies: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    context: int = 0


def read_sequences(sequences) -> list[dict]:
    """Rows of the sequences table as dicts of numpy arrays."""
    table = sequences.with_format("numpy")
    columns = (
        "user_index",
        "movie_index",
        "rating",
        "timestamp",
        "loo_valid_position",
        "loo_test_position",
        "temporal_valid_start",
        "temporal_test_start",
    )
    data = {name: table[name][:] for name in columns}
    return [
        {name: (np.asarray(values[i]) if name in ("movie_index", "rating", "timestamp") else int(values[i])) for name, values in data.items()}
        for i in range(len(table))
    ]


def _take(row: dict, keep) -> UserSequence:
    return UserSequence(
        user_index=row["user_index"],
        movies=row["movie_index"][keep].astype(np.int64),
        ratings=row["rating"][keep].astype(np.float32),
        timestamps=row["timestamp"][keep].astype(np.int64),
    )


def train_sequence(row: dict, split: str, cold_item: np.ndarray) -> UserSequence:
    """The part of one user's sequence that training may see under `split`."""
    n = len(row["movie_index"])
    if split == "leave_one_out":
        end = row["loo_valid_position"] if row["loo_valid_position"] >= 0 else n
        return _take(row, slice(0, end))
    if split == "temporal":
        return _take(row, slice(0, row["temporal_valid_start"]))
    if split == "cold_items":
        warm = np.flatnonzero(~cold_item[row["movie_index"]])
        return _take(row, warm[:-2] if len(warm) >= 3 else warm)
    raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")


def training_windows(sequences: list[UserSequence], *, window: int) -> list[UserSequence]:
    """Chop each sequence into windows of at most `window + 1` steps, ending at its last step, so that the state
    after `window` steps (the one read at inference for a full history) has a target. Consecutive windows share one
    step: the last target of a window is the first (context-only) step of the next, so every step is a training
    target exactly once."""
    windows = []
    for sequence in sequences:
        for end in range(len(sequence.movies), 0, -window):
            start = max(0, end - window - 1)
            part = slice(start, end)
            windows.append(
                UserSequence(
                    sequence.user_index, sequence.movies[part], sequence.ratings[part], sequence.timestamps[part],
                    context=int(start > 0),
                )
            )
    return windows


@dataclass
class EvaluationExamples:
    """One row per (user, target): the history before it (time-ordered), the target and its rating and time."""

    histories: list[UserSequence]
    targets: np.ndarray
    target_ratings: np.ndarray
    target_timestamps: np.ndarray
    candidate_mask: np.ndarray | None = None
    seen: list[np.ndarray] | None = None

    def exclusions(self) -> list[np.ndarray]:
        """Per example, every movie the user rated before the target: excluded from its ranking. That is the
        history, plus under cold_items the held-out movies rated earlier, which the history leaves out."""
        seen = self.seen if self.seen is not None else [history.movies for history in self.histories]
        return [np.unique(movies).astype(np.int64) for movies in seen]

    def __len__(self) -> int:
        return len(self.targets)


def evaluation_examples(rows: list[dict], split: str, stage: str, cold_item: np.ndarray) -> EvaluationExamples:
    """Validation or test events of `split` (PROTOCOL.md). cold_items: every rating of a cold movie is a test event,
    its history the user's earlier ratings without cold movies, ranked among cold movies only; its validation is the
    leave-one-out validation of the warm sequences."""
    if stage not in ("validation", "test"):
        raise DatasetError(f"unknown stage {stage!r}; choose validation or test.")
    histories, targets, ratings, times, seen = [], [], [], [], []

    def add(row: dict, history, position: int) -> None:
        histories.append(_take(row, history))
        seen.append(row["movie_index"][:position])
        targets.append(row["movie_index"][position])
        ratings.append(row["rating"][position])
        times.append(row["timestamp"][position])

    for row in rows:
        n = len(row["movie_index"])
        if split == "leave_one_out":
            position = row["loo_valid_position" if stage == "validation" else "loo_test_position"]
            if position >= 0:
                add(row, slice(0, position), position)
        elif split == "temporal":
            start = row["temporal_valid_start" if stage == "validation" else "temporal_test_start"]
            end = row["temporal_test_start"] if stage == "validation" else n
            if start < end:
                add(row, slice(0, start), start)
        elif split == "cold_items":
            cold = cold_item[row["movie_index"]]
            if stage == "validation":
                warm = np.flatnonzero(~cold)
                if len(warm) >= 3:
                    add(row, warm[:-2], warm[-2])
            else:
                for position in np.flatnonzero(cold):
                    add(row, np.flatnonzero(~cold[:position]), position)
        else:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    candidate_mask = cold_item.copy() if split == "cold_items" and stage == "test" else None
    return EvaluationExamples(
        histories=histories,
        targets=np.asarray(targets, dtype=np.int64),
        target_ratings=np.asarray(ratings, dtype=np.float32),
        target_timestamps=np.asarray(times, dtype=np.int64),
        candidate_mask=candidate_mask,
        seen=seen,
    )


def subset_examples(examples: EvaluationExamples, part: slice) -> EvaluationExamples:
    """The examples in `part` (the candidate mask is the split's, shared by all)."""
    return EvaluationExamples(
        histories=examples.histories[part],
        targets=examples.targets[part],
        target_ratings=examples.target_ratings[part],
        target_timestamps=examples.target_timestamps[part],
        candidate_mask=examples.candidate_mask,
        seen=None if examples.seen is None else examples.seen[part],
    )


def history_until(sequence: UserSequence, as_of: int | None) -> UserSequence:
    """The ratings of a time-ordered sequence made at or before `as_of` (unix seconds; None: all)."""
    if as_of is None:
        return sequence
    keep = sequence.timestamps <= as_of
    return UserSequence(sequence.user_index, sequence.movies[keep], sequence.ratings[keep], sequence.timestamps[keep])


def pad_histories(sequences: list[UserSequence], *, max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded history tensors of the most recent `max_length` steps of each sequence, with the mask of the
    steps that are training targets (all but each sequence's `context` steps)."""
    length = max([min(len(s.movies), max_length) for s in sequences] + [0])
    batch = len(sequences)
    movies = np.zeros((batch, length), np.int64)
    ratings = np.zeros((batch, length), np.float32)
    timestamps = np.zeros((batch, length), np.int64)
    mask = np.zeros((batch, length), bool)
    target = np.zeros((batch, length), bool)
    for row, sequence in enumerate(sequences):
        dropped = max(0, len(sequence.movies) - max_length)
        kept = slice(dropped, None)
        count = len(sequence.movies[kept])
        movies[row, :count] = sequence.movies[kept]
        ratings[row, :count] = sequence.ratings[kept]
        timestamps[row, :count] = sequence.timestamps[kept]
        mask[row, :count] = True
        target[row, max(0, sequence.context - dropped) : count] = True
    return {
        "history_movie_indices": torch.from_numpy(movies),
        "history_ratings": torch.from_numpy(ratings),
        "history_timestamps": torch.from_numpy(timestamps),
        "history_mask": torch.from_numpy(mask),
        "target_mask": torch.from_numpy(target),
        "user_indices": torch.tensor([s.user_index for s in sequences], dtype=torch.long),
    }
