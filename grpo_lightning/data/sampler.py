"""The prompt order: each epoch's permutation drawn from ``(seed, epoch)`` alone, so a resumed run
can start mid-epoch at the exact batch (see grpo_lightning/run/checkpoints.py)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Row indices for one process: a seeded per-epoch order, sharded by rank, resumable.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed + e``
    (or the natural order without shuffling), so it is known without replaying earlier epochs.
    With ``world_size`` processes, process ``rank`` takes every ``world_size``-th row of it; with
    ``drop_last`` the order is first cut to a whole number of batches on every process, so all
    processes run the same number of steps (DDP needs that).
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        self.num_rows, self.batch_size, self.shuffle, self.seed = num_rows, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0  # batches of the current epoch already trained on (resume)

    def __len__(self) -> int:
        if self.drop_last:
            return (self.num_rows // (self.batch_size * self.world_size)) * self.batch_size
        return len(range(self.rank, self.num_rows, self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        return len(self) // self.batch_size if self.drop_last else -(-len(self) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.start_batch = epoch, 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.start_batch = epoch, batches_done

    def _order(self, epoch: int) -> Tensor:
        """This process's row indices for epoch ``epoch``, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_rows, generator=generator)
        else:
            order = torch.arange(self.num_rows)
        if self.drop_last:
            order = order[: len(self) * self.world_size]
        return order[self.rank :: self.world_size]

    def batch_indices(self, epoch: int, batch: int) -> list[int]:
        """The rows of batch ``batch`` of epoch ``epoch`` for this process, as iteration yields them
        (asynchronous rollouts look ahead with it)."""
        return self._order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[int]:
        mine = self._order(self.epoch)
        start, self.start_batch = self.start_batch * self.batch_size, 0  # the skip applies once
        return iter(mine[start:].tolist())
