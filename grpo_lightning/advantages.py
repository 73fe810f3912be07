"""Group-relative advantages [GRPO, Shao et al. 2024, arXiv:2402.03300, section 4.1.2].

For a group of G completions of one prompt with rewards r_1..r_G:

    A_i = (r_i - mean(r)) / (std(r) + eps)        (normalize_by_std=True)
    A_i =  r_i - mean(r)                          (normalize_by_std=False)

std is the population std (divide by G), as in the paper's formula; TRL and verl use the
sample std (divide by G - 1), which scales every advantage by sqrt((G-1)/G). A group whose
rewards are all equal carries no signal and gets exactly 0.

Estimators are registered by name so a config picks one (``algorithm.adv_estimator``) and user
code can add its own::

    @register_adv_estimator("my_estimator")
    def my_estimator(rewards, *, group_ids, group_size, eps, normalize_by_std): ...

Every estimator takes rewards ``[N]`` (N completions), ``group_ids`` ``[N]`` (which prompt each
completion belongs to), the nominal ``group_size``, and returns advantages ``[N]``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor


class AdvantageEstimator(Protocol):
    def __call__(self, rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float,
                 normalize_by_std: bool) -> Tensor: ...


ADV_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_adv_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make an estimator selectable as ``algorithm.adv_estimator=<name>``."""

    def decorate(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADV_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADV_ESTIMATORS[name] = fn
        return fn

    return decorate


def get_adv_estimator(name: str) -> AdvantageEstimator:
    try:
        return ADV_ESTIMATORS[name]
    except KeyError:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADV_ESTIMATORS)}") from None


def normalize_group_rewards(rewards: Tensor, group_size: int, eps: float = 1e-8,
                            normalize_by_std: bool = True) -> Tensor:
    """Advantages for rewards laid out as consecutive groups of ``group_size``.

    >>> normalize_group_rewards(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2)
    tensor([ 1., -1.,  0.,  0.])
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to form a group baseline, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be a 1-D tensor whose length is a multiple of group_size="
                         f"{group_size}; got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)                          # [N, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)           # [N, G]
    if normalize_by_std:
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    # A constant group would give tiny float noise (or 0/0 with eps=0) instead of 0.
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    return centred.masked_fill(constant, 0.0).view(-1)              # [N*G]


@register_adv_estimator("grpo_vectorized")
def grpo_vectorized(rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float,
                    normalize_by_std: bool) -> Tensor:
    """GRPO for consecutive equal-size groups: one reshape, no scatter."""
    return normalize_group_rewards(rewards, group_size, eps, normalize_by_std)


@register_adv_estimator("grpo")
def grpo(rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float,
         normalize_by_std: bool) -> Tensor:
    """GRPO for groups given by ``group_ids`` in any order and of any sizes (>= 1 each)."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} "
                         "must be 1-D tensors of the same length")
    _, index = torch.unique(group_ids, return_inverse=True)                 # [N] in 0..K-1
    num_groups = int(index.max()) + 1 if index.numel() else 0
    values = rewards
    zeros = values.new_zeros(num_groups)
    count = zeros.index_add(0, index, torch.ones_like(values))             # [K]
    mean = zeros.index_add(0, index, values) / count                       # [K]
    centred = values - mean[index]                                         # [N]
    if normalize_by_std:
        var = zeros.index_add(0, index, centred.square()) / count          # [K], population
        centred = centred / (var.sqrt()[index] + eps)
    high = zeros.scatter_reduce(0, index, values, reduce="amax", include_self=False)
    low = zeros.scatter_reduce(0, index, values, reduce="amin", include_self=False)
    constant = (high == low)[index]
    return centred.masked_fill(constant, 0.0)
