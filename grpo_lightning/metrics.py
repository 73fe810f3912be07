"""torchmetrics for one stage: named weighted means, synced across processes on compute.

One GRPO training step spans several micro-batches (num_iterations x mini-batches), so each
statistic is averaged over all of them, weighted by their size, rather than reporting the last
micro-batch's value. A :class:`StageMeans` is reset at the start of each training step and
computed once at its end; for validation it accumulates over the whole validation run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric


def _key(name: str) -> str:
    # nn.ModuleDict keys may not contain '.'; metric names use '/' and never '.'.
    return name.replace("/", "__")


class StageMeans(nn.Module):
    """A fixed set of named :class:`~torchmetrics.MeanMetric` s.

    The names are declared up front so every process holds the same metrics (required for
    the cross-process sync in ``compute``).
    """

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = list(names)
        self.means = nn.ModuleDict({_key(name): MeanMetric(nan_strategy="error") for name in self.names})

    def __getitem__(self, name: str) -> MeanMetric:
        return self.means[_key(name)]

    def update(self, values: dict[str, Tensor | float], weight: float | Tensor = 1.0) -> None:
        for name, value in values.items():
            if name not in self.names:
                raise KeyError(f"metric {name!r} was not declared; declared: {self.names}")
            self[name].update(torch.as_tensor(value, dtype=torch.float32), weight)

    def compute(self) -> dict[str, Tensor]:
        """Means of the metrics that received at least one value."""
        return {name: self[name].compute() for name in self.names if self[name].update_count > 0}

    def reset(self) -> None:
        for metric in self.means.values():
            metric.reset()
