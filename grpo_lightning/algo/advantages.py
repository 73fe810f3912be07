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

Built-in estimators (formulas in docs/algorithms.md):

* ``grpo`` / ``grpo_vectorized``: group mean baseline, scaled per ``algorithm.scale_rewards``
  (``group``: the group's std; ``batch``: the whole batch's std of the centred rewards
  (:func:`scale_by_batch_std`); ``none``: no scaling);
* ``dr_grpo``: group mean baseline, never divided by a std [Dr. GRPO, arXiv:2503.20783];
* ``rloo``: leave-one-out baseline, the mean of the other G-1 rewards [Ahmadian et al. 2024,
  arXiv:2402.14740];
* ``reinforce_pp``: rewards whitened over the whole batch [REINFORCE++, Hu 2025,
  arXiv:2501.03262].

An estimator registered with ``scale_rewards=False`` fixes its own scale: the module passes it
``normalize_by_std=False`` and never rescales its output; ``algorithm.scale_rewards`` must then be
left null (checked by ``validate_config``).

Statistics over the batch (``scale_rewards=batch``, REINFORCE++) are taken over the batch of
every process (:mod:`grpo_lightning.distributed`); group statistics need no communication,
since a group never spans processes.

Token-level (process) rewards ``[N, T]`` go through :func:`token_level_advantages`: discounted
per-token returns (``algorithm.gamma``), then group normalization over all completion tokens of
the group.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch
from torch import Tensor

from grpo_lightning.algo.registry import Registry
from grpo_lightning.distributed import global_mean_std


class AdvantageEstimator(Protocol):
    def __call__(
        self, rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, normalize_by_std: bool
    ) -> Tensor: ...


ADV_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")
SELF_SCALED: set[str] = set()
"""Estimators that fix their own scale (``algorithm.scale_rewards`` does not apply to them)."""
SCALE_REWARDS = ("group", "batch", "none")


def register_adv_estimator(
    name: str, *, scale_rewards: bool = True
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make an estimator selectable as ``algorithm.adv_estimator=<name>``.

    ``scale_rewards=True`` (default): the estimator divides by the group std when called with
    ``normalize_by_std=True`` and only centres otherwise, so ``algorithm.scale_rewards``
    (group / batch / none) applies to it. ``False``: the estimator fixes its own scale.
    """

    def decorate(fn: AdvantageEstimator) -> AdvantageEstimator:
        ADV_ESTIMATORS.register(name)(fn)
        if not scale_rewards:
            SELF_SCALED.add(name)
        return fn

    return decorate


def get_adv_estimator(name: str) -> AdvantageEstimator:
    return ADV_ESTIMATORS.lookup(name)


def constant_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[N] True for each group of ``group_size`` consecutive rewards that are all equal: zero
    advantages, no learning signal (GRPO's degenerate case; DAPO drops such groups).

    >>> constant_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist()
    [True, False]
    """
    grouped = rewards.view(-1, group_size)  # [N, G]
    return grouped.amax(dim=1) == grouped.amin(dim=1)


def normalize_group_rewards(
    rewards: Tensor, group_size: int, eps: float = 1e-8, normalize_by_std: bool = True
) -> Tensor:
    """Advantages for rewards laid out as consecutive groups of ``group_size``.

    >>> normalize_group_rewards(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2)
    tensor([ 1., -1.,  0.,  0.])
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to form a group baseline, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be a 1-D tensor whose length is a multiple of group_size="
            f"{group_size}; got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, group_size)  # [N, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [N, G]
    if normalize_by_std:
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    # A constant group would give tiny float noise (or 0/0 with eps=0) instead of 0.
    return centred.masked_fill(constant_groups(rewards, group_size).unsqueeze(1), 0.0).view(-1)  # [N*G]


@register_adv_estimator("grpo_vectorized")
def grpo_vectorized(
    rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, normalize_by_std: bool
) -> Tensor:
    """GRPO for consecutive equal-size groups: one reshape, no scatter."""
    return normalize_group_rewards(rewards, group_size, eps, normalize_by_std)


@register_adv_estimator("grpo")
def grpo(rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, normalize_by_std: bool) -> Tensor:
    """GRPO for groups given by ``group_ids`` in any order and of any sizes (>= 1 each)."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} "
            "must be 1-D tensors of the same length"
        )
    _, index = torch.unique(group_ids, return_inverse=True)  # [N] in 0..K-1
    num_groups = int(index.max()) + 1 if index.numel() else 0
    values = rewards
    zeros = values.new_zeros(num_groups)
    count = zeros.index_add(0, index, torch.ones_like(values))  # [K]
    mean = zeros.index_add(0, index, values) / count  # [K]
    centred = values - mean[index]  # [N]
    if normalize_by_std:
        var = zeros.index_add(0, index, centred.square()) / count  # [K], population
        centred = centred / (var.sqrt()[index] + eps)
    high = zeros.scatter_reduce(0, index, values, reduce="amax", include_self=False)
    low = zeros.scatter_reduce(0, index, values, reduce="amin", include_self=False)
    constant = (high == low)[index]
    return centred.masked_fill(constant, 0.0)


def scale_by_batch_std(advantages: Tensor, eps: float) -> Tensor:
    """``scale_rewards=batch``: group-centred advantages [N] divided by their std over the batch.

    Population std, like the group case, over the batch of every process (the global batch
    under DDP). A batch whose centred rewards are all 0 stays 0.
    """
    std = global_mean_std(advantages)[1]
    return torch.where(std > 0, advantages / (std + eps), advantages)


def compute_advantages(
    estimator_name: str, rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, scale_rewards: str
) -> Tensor:
    """Run a registered estimator with ``scale_rewards`` applied as that estimator allows.  [N] -> [N]"""
    estimator = get_adv_estimator(estimator_name)
    if estimator_name in SELF_SCALED:
        return estimator(rewards, group_ids=group_ids, group_size=group_size, eps=eps, normalize_by_std=False)
    advantages = estimator(
        rewards, group_ids=group_ids, group_size=group_size, eps=eps, normalize_by_std=scale_rewards == "group"
    )
    return scale_by_batch_std(advantages, eps) if scale_rewards == "batch" else advantages


@register_adv_estimator("dr_grpo", scale_rewards=False)
def dr_grpo(rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, normalize_by_std: bool) -> Tensor:
    """Dr. GRPO: r_i - mean(r), no std division (the std favours too-easy / too-hard groups)."""
    return grpo(rewards, group_ids=group_ids, group_size=group_size, eps=eps, normalize_by_std=False)


@register_adv_estimator("rloo", scale_rewards=False)
def rloo(rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, normalize_by_std: bool) -> Tensor:
    """RLOO: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r)), per group.

    Groups of any sizes and order (``group_ids``); a group of one completion has no baseline
    and gets 0.
    """
    _, index = torch.unique(group_ids, return_inverse=True)  # [N] in 0..K-1
    num_groups = int(index.max()) + 1 if index.numel() else 0
    zeros = rewards.new_zeros(num_groups)
    count = zeros.index_add(0, index, torch.ones_like(rewards))[index]  # [N] size of own group
    total = zeros.index_add(0, index, rewards)[index]  # [N] sum of own group
    others_mean = (total - rewards) / (count - 1).clamp(min=1)  # [N]
    return torch.where(count > 1, rewards - others_mean, torch.zeros_like(rewards))


@register_adv_estimator("reinforce_pp", scale_rewards=False)
def reinforce_pp(rewards: Tensor, *, group_ids: Tensor, group_size: int, eps: float, normalize_by_std: bool) -> Tensor:
    """REINFORCE++: (r_i - mean_batch(r)) / (std_batch(r) + eps), no per-prompt baseline.

    The batch is that of every process (the global batch under DDP)."""
    mean, std = global_mean_std(rewards)
    centred = rewards - mean  # [N]
    return torch.where(std > 0, centred / (std + eps), centred)


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) r_k over each completion's valid tokens.  [N, T] -> [N, T]"""
    rewards = token_rewards * mask
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.size(0))  # [N]
    for t in range(rewards.size(1) - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def token_level_advantages(
    token_rewards: Tensor, mask: Tensor, *, group_ids: Tensor, gamma: float, eps: float, scale_rewards: str = "group"
) -> Tensor:
    """Process rewards: per-token returns, centred on the mean over all valid tokens of each group
    and scaled by the std of those tokens (``group``), of all valid tokens of the batch
    (``batch``), or not at all (``none``).

    Args:
        token_rewards: [N, T] reward of each completion token (0 where none is given).
        mask: [N, T] 1 on completion tokens.
    Returns:
        advantages [N, T], 0 on padding.
    """
    valid = mask > 0
    mask = mask.to(token_rewards.dtype)
    # Padding may hold anything (NaN from an external batch); NaN * 0 would still be NaN.
    token_rewards = torch.where(valid, token_rewards, torch.zeros_like(token_rewards))
    returns = discounted_returns(token_rewards, mask, gamma)  # [N, T]
    _, index = torch.unique(group_ids, return_inverse=True)  # [N]
    num_groups = int(index.max()) + 1 if index.numel() else 0
    zeros = returns.new_zeros(num_groups)
    count = zeros.index_add(0, index, mask.sum(dim=1)).clamp(min=1)  # [K] valid tokens
    mean = zeros.index_add(0, index, returns.sum(dim=1)) / count  # [K]
    centred = (returns - mean[index].unsqueeze(1)) * mask  # [N, T]
    # A group whose valid returns are all equal carries no signal: exactly 0, not the float
    # noise of its mean divided by a near-zero std.
    high = zeros.scatter_reduce(
        0, index, returns.masked_fill(~valid, float("-inf")).amax(dim=1), reduce="amax", include_self=False
    )  # [K]
    low = zeros.scatter_reduce(
        0, index, returns.masked_fill(~valid, float("inf")).amin(dim=1), reduce="amin", include_self=False
    )  # [K]
    centred = centred.masked_fill((high <= low)[index].unsqueeze(1), 0.0)
    if scale_rewards == "group":
        var = zeros.index_add(0, index, centred.square().sum(dim=1)) / count
        std = var.sqrt()[index].unsqueeze(1)  # [N, 1]
        centred = torch.where(std > 0, centred / (std + eps), centred)
    elif scale_rewards == "batch":
        std = global_mean_std(centred, mask)[1]  # every process's tokens; mean 0
        centred = torch.where(std > 0, centred / (std + eps), centred)
    return centred


TOKEN_LEVEL_SCALE = {"grpo": None, "grpo_vectorized": None, "dr_grpo": "none"}
"""Estimators whose token-level form is :func:`token_level_advantages`, and the scale each forces
(None: ``algorithm.scale_rewards``)."""


def resolve_scale_rewards(scale_rewards: Optional[str], normalize_by_std: bool) -> str:
    """``algorithm.scale_rewards``, or what ``normalize_by_std`` implies when it is unset (null).

    >>> resolve_scale_rewards(None, True), resolve_scale_rewards(None, False), resolve_scale_rewards("batch", True)
    ('group', 'none', 'batch')
    """
    if scale_rewards is not None:
        return scale_rewards
    return "group" if normalize_by_std else "none"


def batch_advantages(
    rewards: Tensor,
    token_rewards: Optional[Tensor],
    mask: Tensor,
    *,
    estimator: str,
    group_ids: Tensor,
    group_size: int,
    eps: float,
    scale_rewards: str,
    gamma: float,
) -> Tensor:
    """The advantages of one batch: [B] from outcome rewards [B] by ``estimator``; [B, T] from
    token-level rewards [B, T] (when given) by discounted returns, scaled as the estimator does."""
    if token_rewards is None:
        return compute_advantages(
            estimator, rewards, group_ids=group_ids, group_size=group_size, eps=eps, scale_rewards=scale_rewards
        )  # [B]
    if estimator not in TOKEN_LEVEL_SCALE:
        raise ValueError(
            f"this batch carries token_rewards, which algorithm.adv_estimator={estimator} does not handle; "
            f"use one of {sorted(TOKEN_LEVEL_SCALE)}"
        )
    scale = TOKEN_LEVEL_SCALE[estimator] or scale_rewards
    return token_level_advantages(token_rewards, mask, group_ids=group_ids, gamma=gamma, eps=eps, scale_rewards=scale)
