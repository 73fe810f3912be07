"""What processes must agree on: batch-level statistics and, under sharded weights, every
forward call (all no-ops in a single process).

Under DDP every process holds its own prompts with all of their completions, so group
statistics (a group's mean and std) never need communication. Statistics over the whole
batch do: the batch std of the rewards (``scale_rewards=batch``, REINFORCE++), the number of
completion tokens that a token-mean loss divides by. These helpers give every process the
value of the global batch; none carries a gradient and each costs one all-reduce.

    std = global_mean_std(rewards)[1]                     # same value on every process
    # DDP averages gradients over processes, so dividing each process's token sum by the
    # mean token count per process gives the global token mean:
    loss = (token_loss * mask).sum() / mean_over_processes(mask.sum())

Inputs must have the same dtype and device on every process (all-reduce is collective: every
process must call the same helper in the same order).

Sharded weights (FSDP, DeepSpeed ZeRO-3) add a stricter rule: each forward call gathers the
weights with a collective, so every process must make the same number of calls, or the ones
that made fewer wait forever. A loop whose length depends on the data (decoding until every
row has ended, dynamic-sampling rounds) then asks an :data:`AllAgree` whether to stop, and
runs on until every process may (see ``GRPOModule.setup``), and every process gets the same
number of validation batches (``PromptDataModule.val_dataloader``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

AllAgree = Callable[[bool], bool]
"""``all_agree(decision)``: whether ``decision`` holds on every process. Collective: every
process calls it at the same point (Lightning's ``strategy.reduce_boolean_decision``)."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def per_process(value: Any) -> list[Any]:
    """Every process's ``value`` (any picklable object), indexed by rank: what one process writes
    into a checkpoint on behalf of all (random states, stream positions). Collective."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def global_sum(value: Tensor) -> Tensor:
    """Sum of ``value`` over processes (elementwise); no gradient flows through it."""
    total = value.detach().clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def widest_float(device: torch.device) -> torch.dtype:
    """float64, for sums that float32 would round badly; float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def shards_weights(strategy) -> bool:
    """Whether a Lightning strategy shards the weights, making each forward call a collective:
    FSDP, DeepSpeed ZeRO-3, ModelParallelStrategy (FSDP2 / tensor parallel)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, DeepSpeedStrategy):
        return strategy.zero_stage_3
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def mean_over_processes(value: Tensor) -> Tensor:
    """The mean of ``value`` over processes (``value`` itself in one process); no gradient."""
    return global_sum(value) / world_size()


def global_mean_std(values: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and population std of ``values`` (``[B]`` or any shape, optionally masked) over the
    elements of every process: one all-reduce of (count, sum, sum of squares), in float64 (float32
    on MPS) so the E[x^2] - E[x]^2 form does not lose precision."""
    x = values.detach().to(widest_float(values.device))
    weights = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    moments = torch.stack([weights.sum(), (x * weights).sum(), (x * x * weights).sum()])  # [3]
    count, total, squares = global_sum(moments).unbind()
    count = count.clamp(min=1)
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0)
    return mean.to(values.dtype), var.sqrt().to(values.dtype)
