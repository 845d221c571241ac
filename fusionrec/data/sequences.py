"""Users' rating sequences under each split (PROTOCOL.md): what training may see, training windows, validation and
test examples (the history before each target), histories "as of" a time, and padding to model inputs.
"""

from __future__ import annotations

from collections import abc
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from fusionrec.errors import DatasetError

SPLITS = ("leave_one_out", "temporal", "cold_items")
LIST_COLUMNS = {"movie_index": np.int32, "rating": np.float32, "timestamp": np.int64}
SCALAR_COLUMNS = ("user_index", "loo_valid_position", "loo_test_position", "temporal_valid_start", "temporal_test_start")


@dataclass
class UserSequence:
    """One user's time-ordered ratings; the first `context` steps of a training window are history, not targets."""

    user_index: int
    movies: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    context: int = 0


class SequenceRows(abc.Sequence):
    """The sequences table as flat columns, user i's ratings at offsets[i]:offsets[i+1], built without per-row Python;
    row i reads as a dict of numpy views (user_index, movie_index, rating, timestamp, the split markers and, read from
    a table, user_id)."""

    def __init__(self, offsets: np.ndarray, flat: dict[str, np.ndarray], scalars: dict[str, np.ndarray]) -> None:
        self.offsets, self.flat, self.scalars = offsets, flat, scalars

    @classmethod
    def from_table(cls, table: pa.Table) -> SequenceRows:
        lengths = pc.list_value_length(table["movie_index"]).to_numpy(zero_copy_only=False)
        flat = {
            name: pc.list_flatten(table[name]).to_numpy().astype(dtype, copy=False) for name, dtype in LIST_COLUMNS.items()
        }
        names = [*SCALAR_COLUMNS, *(["user_id"] if "user_id" in table.column_names else [])]
        scalars = {name: table[name].to_numpy().astype(np.int64) for name in names}
        return cls(np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))), flat, scalars)

    @classmethod
    def from_dicts(cls, rows: abc.Sequence[dict]) -> SequenceRows:
        lengths = [len(row["movie_index"]) for row in rows]
        flat = {
            name: np.concatenate([np.asarray(row[name]) for row in rows] or [np.zeros(0)]).astype(dtype, copy=False)
            for name, dtype in LIST_COLUMNS.items()
        }
        scalars = {name: np.array([row[name] for row in rows], dtype=np.int64) for name in SCALAR_COLUMNS}
        return cls(np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))), flat, scalars)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        part = slice(self.offsets[index], self.offsets[index + 1])
        return {
            **{name: int(values[index]) for name, values in self.scalars.items()},
            **{name: values[part] for name, values in self.flat.items()},
        }

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, position within its row) of every flat entry."""
        row = np.repeat(np.arange(len(self)), self.lengths())
        return row, np.arange(self.offsets[-1]) - self.offsets[row]

    def sequences(self, rows: slice = slice(None)) -> Sequences:
        """These rows' whole sequences as views on the flat columns."""
        offsets = self.offsets[:-1][rows], self.offsets[1:][rows]
        flat = self.flat
        return Sequences(self.scalars["user_index"][rows], flat["movie_index"], flat["rating"], flat["timestamp"],
                         starts=offsets[0], stops=offsets[1])  # fmt: skip


def read_sequences(sequences) -> SequenceRows:
    """The sequences table (a datasets Dataset, as `load_tables` returns it, or a pyarrow Table) as SequenceRows."""
    table = sequences if isinstance(sequences, pa.Table) else sequences.with_format("arrow")[:]
    return SequenceRows.from_table(table)


def as_rows(rows) -> SequenceRows:
    return rows if isinstance(rows, SequenceRows) else SequenceRows.from_dicts(list(rows))


class Sequences(abc.Sequence):
    """Many UserSequences as flat columns (sequence i at offsets[i]:offsets[i+1], or the explicit `starts`/`stops`
    of windows that overlap); item i is a UserSequence whose arrays are cut from the columns on access."""

    def __init__(self, user_index, movies, ratings, timestamps, *, starts, stops, context=None) -> None:
        self.user_index, self.movies, self.ratings, self.timestamps = user_index, movies, ratings, timestamps
        self.starts, self.stops = starts, stops
        self.context = np.zeros(len(starts), dtype=np.int64) if context is None else context

    @classmethod
    def from_list(cls, sequences: abc.Sequence[UserSequence]) -> Sequences:
        if isinstance(sequences, Sequences):
            return sequences
        lengths = np.array([len(s.movies) for s in sequences], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)))

        def joined(name: str, dtype) -> np.ndarray:
            return np.concatenate([getattr(s, name) for s in sequences] or [np.zeros(0)]).astype(dtype, copy=False)

        return cls(
            np.array([s.user_index for s in sequences], dtype=np.int64),
            joined("movies", np.int64), joined("ratings", np.float32), joined("timestamps", np.int64),
            starts=offsets[:-1], stops=offsets[1:], context=np.array([s.context for s in sequences], dtype=np.int64),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> UserSequence:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        part = slice(self.starts[index], self.stops[index])
        return UserSequence(
            int(self.user_index[index]),
            self.movies[part].astype(np.int64),
            self.ratings[part].astype(np.float32, copy=False),
            self.timestamps[part].astype(np.int64, copy=False),
            context=int(self.context[index]),
        )

    def lengths(self) -> np.ndarray:
        return self.stops - self.starts

    def subset(self, part: slice | np.ndarray) -> Sequences:
        """The sequences in `part` (a slice, indices or a mask), views on the same columns."""
        return Sequences(self.user_index[part], self.movies, self.ratings, self.timestamps,
                         starts=self.starts[part], stops=self.stops[part], context=self.context[part])  # fmt: skip

    def nonempty(self) -> Sequences:
        return self.subset(self.lengths() > 0)

    def until(self, times: np.ndarray) -> Sequences:
        """Each (time-ordered) sequence cut to its steps at or before times[i] (unix seconds): a prefix of it."""
        lengths = self.lengths()
        owner = np.repeat(np.arange(len(self)), lengths)
        flat = np.arange(lengths.sum()) + np.repeat(self.starts - np.cumsum(lengths) + lengths, lengths)
        kept = np.bincount(owner, weights=self.timestamps[flat] <= times[owner], minlength=len(self)).astype(np.int64)
        return Sequences(self.user_index, self.movies, self.ratings, self.timestamps,
                         starts=self.starts, stops=self.starts + kept, context=self.context)  # fmt: skip

    def num_targets(self) -> int:
        return int((self.lengths() - self.context).sum())

    def all_movies(self) -> np.ndarray:
        """Every step's movie, each step once (sequences from `training_part`, not overlapping windows)."""
        return np.concatenate([self.movies[a:b] for a, b in zip(self.starts, self.stops, strict=True)] or [np.zeros(0, np.int64)])


def _within_row_rank(flags: np.ndarray, rows: SequenceRows) -> tuple[np.ndarray, np.ndarray]:
    """For a flag per flat entry: (how many flagged entries precede each entry in its row, flagged count per row)."""
    before = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    row, _ = rows.positions()
    return before[:-1] - before[rows.offsets[:-1]][row], before[rows.offsets[1:]] - before[rows.offsets[:-1]]


def training_part(rows, split: str, cold_item: np.ndarray) -> Sequences:
    """What training may see of every user's sequence under `split` (one sequence per row, possibly empty)."""
    rows = as_rows(rows)
    row, position = rows.positions()
    lengths = rows.lengths()
    if split == "leave_one_out":
        valid = rows.scalars["loo_valid_position"]
        keep = position < np.where(valid >= 0, valid, lengths)[row]
    elif split == "temporal":
        keep = position < rows.scalars["temporal_valid_start"][row]
    elif split == "cold_items":
        warm = ~np.asarray(cold_item, dtype=bool)[rows.flat["movie_index"]]
        rank, count = _within_row_rank(warm, rows)
        keep = warm & ((count[row] < 3) | (rank < count[row] - 2))
    else:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    kept = np.concatenate(([0], np.cumsum(np.bincount(row[keep], minlength=len(rows)), dtype=np.int64)))
    return Sequences(
        rows.scalars["user_index"], rows.flat["movie_index"][keep], rows.flat["rating"][keep],
        rows.flat["timestamp"][keep], starts=kept[:-1], stops=kept[1:],
    )  # fmt: skip


def train_sequence(row: dict, split: str, cold_item: np.ndarray) -> UserSequence:
    """The part of one user's sequence that training may see under `split`."""
    return training_part([row], split, cold_item)[0]


def training_windows(sequences, *, window: int, stride: int | None = None) -> Sequences:
    """Chop each sequence into windows of at most `window + 1` steps, ending at its last step, so that the state
    after `window` steps (the one read at inference for a full history) has a target. A window's targets are its
    last `stride` steps (default `window`: consecutive windows share one step, the first context-only one); the rest
    is context, so a shorter stride lets every target see at least `window + 1 - stride` earlier steps, closer to
    the full history it is read with at inference, for proportionally more windows. The window that starts at step
    0 has all its steps as targets; every step is a target exactly once. Windows come sequence by sequence, latest
    first; they are views on the same columns."""
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"the window stride must be between 1 and the window ({window}), got {stride}.")
    sequences = Sequences.from_list(sequences)
    lengths = sequences.lengths()
    count = np.where(lengths > 0, 1 + np.maximum(0, -(-(lengths - window - 1) // stride)), 0)  # until one starts at 0
    owner = np.repeat(np.arange(len(sequences)), count)
    number = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    end = lengths[owner] - number * stride
    start = np.maximum(0, end - window - 1)
    return Sequences(
        sequences.user_index[owner], sequences.movies, sequences.ratings, sequences.timestamps,
        starts=sequences.starts[owner] + start, stops=sequences.starts[owner] + end,
        context=np.where(start > 0, end - stride - start, 0),
    )  # fmt: skip


@dataclass
class EvaluationExamples:
    """One row per (user, target): the target, its rating and time, and where it sits in its user's row; the history
    before it (time-ordered; under cold_items without cold movies) is cut from the row on access, so millions of
    examples cost a few arrays, not millions of copies."""

    rows: SequenceRows
    example_rows: np.ndarray
    positions: np.ndarray
    targets: np.ndarray
    target_ratings: np.ndarray
    target_timestamps: np.ndarray
    warm_only: np.ndarray | None = None  # cold_items: the cold-item mask kept out of histories
    candidate_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def history(self, index: int) -> UserSequence:
        row = int(self.example_rows[index])
        part = slice(self.rows.offsets[row], self.rows.offsets[row] + self.positions[index])
        movies = self.rows.flat["movie_index"][part]
        keep = slice(None) if self.warm_only is None else ~self.warm_only[movies]
        return UserSequence(
            int(self.rows.scalars["user_index"][row]),
            movies[keep].astype(np.int64),
            self.rows.flat["rating"][part][keep].astype(np.float32, copy=False),
            self.rows.flat["timestamp"][part][keep].astype(np.int64, copy=False),
        )

    def history_windows(self) -> Sequences:
        """Every example's history as a view on flat columns (under cold_items, columns without the cold movies), to
        be batched by `gather_windows` with no per-example Python."""
        offsets = self.rows.offsets[self.example_rows]
        flat = self.rows.flat
        columns = [flat["movie_index"], flat["rating"], flat["timestamp"]]
        starts, stops = offsets, offsets + self.positions
        if self.warm_only is not None:
            keep = ~self.warm_only[flat["movie_index"]]
            before = np.concatenate(([0], np.cumsum(keep)))
            columns, starts, stops = [column[keep] for column in columns], before[starts], before[stops]
        return Sequences(self.rows.scalars["user_index"][self.example_rows], *columns, starts=starts, stops=stops)

    def exclusion_pairs(self, part: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(example within `part`, movie) for every movie rated before each example's target: `exclusions` as flat
        arrays, repeats kept (harmless when masking scores), with no per-example Python."""
        starts, lengths = self.rows.offsets[self.example_rows[part]], self.positions[part]
        example = np.repeat(np.arange(len(lengths)), lengths)
        flat = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return example, self.rows.flat["movie_index"][flat].astype(np.int64)

    @property
    def histories(self) -> ExampleHistories:
        return ExampleHistories(self)

    def exclusions(self, part: slice = slice(None)) -> list[np.ndarray]:
        """Per example in `part`, every movie the user rated before the target: excluded from its ranking. That is
        the history, plus under cold_items the held-out movies rated earlier, which the history leaves out."""
        starts = self.rows.offsets[self.example_rows[part]]
        movies = self.rows.flat["movie_index"]
        return [np.unique(movies[s : s + n]).astype(np.int64) for s, n in zip(starts, self.positions[part], strict=True)]


class ExampleHistories(abc.Sequence):
    """The examples' histories as a sequence of UserSequence (a slice gives a list)."""

    def __init__(self, examples: EvaluationExamples) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.examples.history(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.examples.history(index % len(self))


def evaluation_examples(rows, split: str, stage: str, cold_item: np.ndarray) -> EvaluationExamples:
    """Validation or test events of `split` (PROTOCOL.md). cold_items: every rating of a cold movie is a test event,
    its history the user's earlier ratings without cold movies, ranked among cold movies only; its validation is the
    leave-one-out validation of the warm sequences."""
    if stage not in ("validation", "test"):
        raise DatasetError(f"unknown stage {stage!r}; choose validation or test.")
    rows = as_rows(rows)
    cold_item = np.asarray(cold_item, dtype=bool)
    warm_only = None
    if split == "leave_one_out":
        position = rows.scalars["loo_valid_position" if stage == "validation" else "loo_test_position"]
        example_rows = np.flatnonzero(position >= 0)
        position = position[example_rows]
    elif split == "temporal":
        start = rows.scalars["temporal_valid_start" if stage == "validation" else "temporal_test_start"]
        end = rows.scalars["temporal_test_start"] if stage == "validation" else rows.lengths()
        example_rows = np.flatnonzero(start < end)
        position = start[example_rows]
    elif split == "cold_items":
        warm_only = cold_item
        cold = cold_item[rows.flat["movie_index"]]
        row, within = rows.positions()
        if stage == "validation":  # the second-last warm rating of users with >= 3 warm ones
            rank, count = _within_row_rank(~cold, rows)
            chosen = np.flatnonzero(~cold & (count[row] >= 3) & (rank == count[row] - 2))
        else:
            chosen = np.flatnonzero(cold)
        example_rows, position = row[chosen], within[chosen]
    else:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    flat = rows.offsets[example_rows] + position
    return EvaluationExamples(
        rows=rows,
        example_rows=example_rows,
        positions=position.astype(np.int64),
        targets=rows.flat["movie_index"][flat].astype(np.int64),
        target_ratings=rows.flat["rating"][flat].astype(np.float32),
        target_timestamps=rows.flat["timestamp"][flat].astype(np.int64),
        warm_only=warm_only,
        candidate_mask=cold_item.copy() if split == "cold_items" and stage == "test" else None,
    )


def subset_examples(examples: EvaluationExamples, part: slice) -> EvaluationExamples:
    """The examples in `part` (the rows and the candidate mask are the split's, shared by all)."""
    return replace(
        examples,
        example_rows=examples.example_rows[part],
        positions=examples.positions[part],
        targets=examples.targets[part],
        target_ratings=examples.target_ratings[part],
        target_timestamps=examples.target_timestamps[part],
    )


def history_until(sequence: UserSequence, as_of: int | None) -> UserSequence:
    """The ratings of a time-ordered sequence made at or before `as_of` (unix seconds; None: all)."""
    if as_of is None:
        return sequence
    keep = sequence.timestamps <= as_of
    return UserSequence(sequence.user_index, sequence.movies[keep], sequence.ratings[keep], sequence.timestamps[keep])


def gather_windows(windows: Sequences, indices: torch.Tensor | np.ndarray, *, max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded history tensors of windows `indices`, gathered by offset from the flat columns in a few array
    ops (no per-window Python): the most recent `max_length` steps of each, with the mask of the steps that are
    training targets (all but each window's `context` steps)."""
    indices = np.asarray(indices, dtype=np.int64)
    stops, first = windows.stops[indices], windows.starts[indices]
    starts = np.maximum(first, stops - max_length)
    lengths = stops - starts
    steps = np.arange(lengths.max(initial=0))
    mask = steps < lengths[:, None]
    flat = np.where(mask, starts[:, None] + steps, 0)
    context = windows.context[indices] - (starts - first)

    def column(values: np.ndarray, dtype) -> torch.Tensor:
        return torch.from_numpy(np.where(mask, values[flat], 0).astype(dtype, copy=False))

    return {
        "history_movie_indices": column(windows.movies, np.int64),
        "history_ratings": column(windows.ratings, np.float32),
        "history_timestamps": column(windows.timestamps, np.int64),
        "history_mask": torch.from_numpy(mask),
        "target_mask": torch.from_numpy(mask & (steps >= context[:, None])),
        "user_indices": torch.from_numpy(windows.user_index[indices].astype(np.int64)),
    }


def pad_histories(sequences: abc.Sequence[UserSequence], *, max_length: int) -> dict[str, torch.Tensor]:
    """`gather_windows` of a list of sequences: all of them, in order."""
    sequences = Sequences.from_list(sequences)
    return gather_windows(sequences, torch.arange(len(sequences)), max_length=max_length)
