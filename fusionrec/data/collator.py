"""The training collator: pads a batch of windows and builds its candidate movies (the batch's own plus uniform
negatives) with the log-probabilities the logQ correction subtracts.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from fusionrec.data.catalog import MovieCatalog
from fusionrec.data.sequences import Sequences, UserSequence, gather_windows


class TrainingCollator:
    """Pads a batch of windows and builds its candidate movies: every movie in the batch plus `num_negatives`
    uniform samples from `negative_pool`, with log_q = log P(candidate is in the set) for the logQ correction:
    1 - P(none of the batch's steps is it) * P(no uniform draw is it), steps drawn by training frequency. Every
    step of a window is a candidate, its context steps too, so all of them count, not only the targets.
    `num_negatives=None` takes the whole pool instead (a full softmax: every candidate certain, log_q 0), which a
    catalog of a few thousand movies affords: their vectors once per step.
    `text_states=False` leaves the frozen text states out of movie_inputs (the largest part of a batch): the training
    loop gathers them where they live, on the device, with `MovieCatalog.text_inputs`."""

    def __init__(
        self,
        catalog: MovieCatalog,
        *,
        config,
        movie_frequency: np.ndarray,
        negative_pool: np.ndarray,
        num_negatives: int | None,
        seed: int,
        text_states: bool = True,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.negative_pool = torch.from_numpy(np.asarray(negative_pool, dtype=np.int64))
        self.num_negatives = num_negatives
        share = np.asarray(movie_frequency, dtype=np.float64)
        self.frequency_share = torch.from_numpy(share / max(share.sum(), 1.0))
        self.in_pool = torch.zeros(len(share), dtype=torch.bool)
        self.in_pool[self.negative_pool] = True
        self.seed = seed
        self.text_states = text_states
        self.calls = 0

    def negative_generator(self, batch_key) -> torch.Generator:
        """The generator for one batch's negatives: a pure function of (seed, batch_key), so a resumed run (or any
        process) draws exactly the negatives of the uninterrupted run for the same batch."""
        digest = hashlib.sha256(f"{self.seed}\0{batch_key!r}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def __call__(
        self, windows: list[UserSequence] | Sequences, *, indices: torch.Tensor | None = None, batch_key=None
    ) -> dict:
        """The batch of `windows` (a list), or of windows `indices` of a Sequences, gathered by offset from its flat
        columns. `batch_key` (e.g. (epoch, batch number)) seeds this batch's negatives; without one, the call count
        is the key (deterministic for a fresh collator called in order, but not for a resumed or sharded loader)."""
        if batch_key is None:
            batch_key = self.calls
        self.calls += 1
        windows = Sequences.from_list(windows)
        indices = torch.arange(len(windows)) if indices is None else indices
        batch = gather_windows(windows, indices, max_length=self.config.max_history_length + 1)
        in_batch = batch["history_movie_indices"][batch["history_mask"]]
        if self.num_negatives is None:
            candidates = torch.unique(torch.cat((in_batch, self.negative_pool)))
            log_q = torch.zeros(len(candidates))
        else:
            generator = self.negative_generator(batch_key)
            picks = torch.randint(len(self.negative_pool), (self.num_negatives,), generator=generator)
            candidates = torch.unique(torch.cat((in_batch, self.negative_pool[picks])))
            steps = int(batch["history_mask"].sum())
            missed_in_batch = (1.0 - self.frequency_share[candidates]) ** steps
            missed_uniform = torch.where(self.in_pool[candidates], (1.0 - 1.0 / len(self.negative_pool)) ** self.num_negatives, 1.0)
            log_q = torch.log((1.0 - missed_in_batch * missed_uniform).clamp(min=1e-12)).float()
        movie_inputs = self.catalog.inputs(candidates, config=self.config, text_states=self.text_states)
        movie_inputs["log_q"] = log_q
        batch["movie_inputs"] = movie_inputs
        return batch


def movie_frequency(sequences, num_movies: int) -> np.ndarray:
    """Training steps per movie of (non-overlapping) sequences: a list of UserSequence or a Sequences."""
    return np.bincount(Sequences.from_list(sequences).all_movies(), minlength=num_movies).astype(np.int64)
