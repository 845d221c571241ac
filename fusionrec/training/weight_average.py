"""An exponential moving average of the trainable weights (Polyak averaging), validated and saved in place of the
raw weights: on a few thousand training windows the raw weights' validation score jumps from one evaluation to the
next, and the average smooths those last steps' noise out instead of picking a lucky one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.updates = 0
        self.average = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold in the current weights. The first updates weigh more (decay (1 + n) / (10 + n) until it reaches
        `decay`), so the average does not remember the random initialisation."""
        self.updates += 1
        keep = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, parameter in model.named_parameters():
            if name in self.average:
                self.average[name].lerp_(parameter.detach(), 1.0 - keep)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own ones again after it."""
        parameters = dict(model.named_parameters())
        raw = {name: parameters[name].detach().clone() for name in self.average}
        with torch.no_grad():
            for name, value in self.average.items():
                parameters[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in raw.items():
                    parameters[name].copy_(value)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.average, "__updates__": torch.tensor(self.updates)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.updates = int(tensors["__updates__"])
        for name, value in self.average.items():
            value.copy_(tensors[name])
