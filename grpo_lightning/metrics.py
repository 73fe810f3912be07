"""A torchmetrics metric for one stage: named weighted means, synced across processes on compute.

One GRPO training step spans several micro-batches (num_iterations x mini-batches), so each
statistic is averaged over all of them, weighted by their size, rather than reporting the last
micro-batch's value. :class:`StageMeans` is reset at the start of each training step and
computed once at its end; for validation it accumulates over the whole validation run.

All of a stage's means live in two vectors (weighted sums and weights, one slot per name), so
an update is a few small tensor ops with no host sync, and ``compute`` reduces them across
processes in two all-reduces, not two per metric. A non-finite value is an error, raised at
``compute`` with the metric's name (checking at each update would sync the device each time).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class StageMeans(Metric):
    """Weighted means of a fixed set of named statistics.

    The names are declared up front so every process holds the same slots (required for the
    cross-process sum in ``compute``).
    """

    full_state_update = False
    sums: Tensor
    weights: Tensor

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = list(names)
        self._slot = {name: slot for slot, name in enumerate(self.names)}
        self.add_state("sums", default=torch.zeros(len(self.names)), dist_reduce_fx="sum")
        self.add_state("weights", default=torch.zeros(len(self.names)), dist_reduce_fx="sum")

    def update(self, values: dict[str, Tensor | float], weight: float | Tensor = 1.0) -> None:
        """Add each value (a number, or a tensor whose elements all count) with ``weight`` per element."""
        for name, value in values.items():
            slot = self._slot.get(name)
            if slot is None:
                raise KeyError(f"metric {name!r} was not declared; declared: {self.names}")
            value = torch.as_tensor(value, dtype=torch.float32, device=self.sums.device)
            weights = torch.as_tensor(weight, dtype=torch.float32, device=self.sums.device).expand_as(value)
            self.sums[slot] += (value * weights).sum()
            self.weights[slot] += weights.sum()

    def compute(self) -> dict[str, Tensor]:
        """Means of the statistics that received at least one value."""
        means = self.sums / self.weights.clamp(min=torch.finfo(torch.float32).tiny)  # [M]
        received, finite = torch.stack([self.weights > 0, means.isfinite()]).tolist()  # one host sync
        broken = [name for name, seen, ok in zip(self.names, received, finite) if seen and not ok]
        if broken:
            raise RuntimeError(
                f"non-finite values were logged for {broken}: a NaN or inf reached the "
                "metrics (the loss guard skips such updates; this is a bug worth reporting)"
            )
        return {name: means[slot] for slot, (name, seen) in enumerate(zip(self.names, received)) if seen}
