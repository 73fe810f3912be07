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
* ``reinforce_pp``: per-token returns (the outcome reward on the last token, minus the KL still
  to come under ``kl_in_reward``) whitened over every completion token of the batch
  [REINFORCE++, Hu 2025, arXiv:2501.03262, eqs. 3-5].

An estimator registered with ``scale_rewards=False`` fixes its own scale: the module passes it
``normalize_by_std=False`` and never rescales its output; ``algorithm.scale_rewards`` must then be
left null (checked by ``validate_config``).

An estimator registered with ``per_token=True`` works on token rewards instead::

    @register_adv_estimator("my_token_estimator", scale_rewards=False, per_token=True)
    def my_token_estimator(token_rewards, mask, *, group_ids, group_size, eps, gamma): ...

``token_rewards`` ``[N, T]`` are the batch's process rewards, or each outcome reward placed on its
completion's last token (:func:`outcome_at_last_token`); with ``kl_in_reward`` they carry
-beta * KL on every token. It returns advantages ``[N, T]``, 0 on padding.

Statistics over the batch (``scale_rewards=batch``, REINFORCE++) are taken over the batch of
every process (:mod:`grpo_lightning.distributed`); group statistics need no communication,
since a group never spans processes.

Token-level (process) rewards ``[N, T]`` of the group estimators go through the form that
``algorithm.token_advantage`` names (registry :data:`TOKEN_ADVANTAGES`):

* ``process_supervision`` (default): the paper's process supervision [GRPO, section 4.1.3]: the
  step rewards are normalized over all steps of the group, then each token's advantage is the
  (``algorithm.gamma``-discounted) sum of the normalized rewards of the steps that end at or after
  it (:func:`process_supervision_advantages`). An outcome reward on the last token reduces
  exactly to outcome GRPO, whatever the lengths.
* ``normalized_returns``: per-token discounted returns first, then normalized over all
  completion tokens of the group (:func:`token_level_advantages`; the only form before
  ``process_supervision`` was added; a group's long completions weigh more in its mean, so an
  outcome reward on the last token does not reduce to outcome GRPO when lengths differ).

A step is a token that carries a reward: the batch's ``token_reward_mask`` where given, else
every token with a non-zero reward plus each completion's last token (where an outcome or final
step reward sits, zero or not) (:func:`default_step_mask`).
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
PER_TOKEN: set[str] = set()
"""Estimators that take token rewards [N, T] and return token advantages [N, T]."""
PER_REWARD: set[str] = set()
"""Estimators that take each reward function's scores [K, N] and weights [K] (GDPO)."""
SCALE_REWARDS = ("group", "batch", "none")


def register_adv_estimator(
    name: str, *, scale_rewards: bool = True, per_token: bool = False, per_reward: bool = False
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make an estimator selectable as ``algorithm.adv_estimator=<name>``.

    ``scale_rewards=True`` (default): the estimator divides by the group std when called with
    ``normalize_by_std=True`` and only centres otherwise, so ``algorithm.scale_rewards``
    (group / batch / none) applies to it. ``False``: the estimator fixes its own scale.
    ``per_token=True``: the estimator has the token-reward signature (module docstring);
    ``per_reward=True``: it takes each reward function's scores, ``fn(parts [K, N], weights [K], *,
    group_ids, group_size, eps, applicable)`` (``applicable`` [K, N]: False where a function returned
    None). Either must fix its own scale.
    """
    if (per_token or per_reward) and scale_rewards:
        raise ValueError(f"estimator {name!r}: a per-token or per-reward estimator fixes its own scale")

    def decorate(fn: AdvantageEstimator) -> AdvantageEstimator:
        ADV_ESTIMATORS.register(name)(fn)
        if not scale_rewards:
            SELF_SCALED.add(name)
        if per_token:
            PER_TOKEN.add(name)
        if per_reward:
            PER_REWARD.add(name)
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
    """Run a registered outcome estimator with ``scale_rewards`` applied as that estimator allows.
    [N] -> [N]. Per-token estimators go through :func:`batch_advantages`."""
    estimator = get_adv_estimator(estimator_name)
    if estimator_name in PER_TOKEN or estimator_name in PER_REWARD:
        raise ValueError(f"adv_estimator={estimator_name} needs token or per-function rewards; call batch_advantages")
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


@register_adv_estimator("reinforce_pp", scale_rewards=False, per_token=True)
def reinforce_pp(
    token_rewards: Tensor, mask: Tensor, *, group_ids: Tensor, group_size: int, eps: float, gamma: float
) -> Tensor:
    """REINFORCE++: per-token returns G_t = sum_{k >= t} gamma^(k - t) r_k, whitened over every
    completion token of the batch: (G_t - mean) / (std + eps), no per-prompt baseline.

    With the outcome reward on the last token and -beta * KL_k on every token (``kl_in_reward``),
    G_t = r - beta * sum_{k >= t} KL_k: the KL still to come [REINFORCE++, eqs. 3-5]. The batch
    is that of every process (the global batch under DDP).  [N, T] -> [N, T]
    """
    valid = mask > 0
    returns = discounted_returns(torch.where(valid, token_rewards, 0.0), mask.to(token_rewards.dtype), gamma)
    mean, std = global_mean_std(returns, mask)
    centred = torch.where(valid, returns - mean, 0.0)  # [N, T]
    return torch.where(std > 0, centred / (std + eps), centred)


def _normalize_where_applicable(values: Tensor, applicable: Tensor, group_ids: Tensor, eps: float) -> Tensor:
    """(r - mean) / (std + eps) within each group over the completions a function applied to (its
    value not None), 0 for the others and in groups whose applicable values are all equal.  [N] -> [N]"""
    index, num_groups = _group_index(group_ids)
    weight = applicable.to(values.dtype)
    zeros = values.new_zeros(num_groups)
    count = zeros.index_add(0, index, weight).clamp(min=1)  # [K]
    mean = zeros.index_add(0, index, values * weight) / count  # [K]
    centred = (values - mean[index]) * weight  # [N]
    std = (zeros.index_add(0, index, centred.square()) / count).sqrt()[index]  # [N]
    constant = _constant_in_group(values.unsqueeze(1), applicable.unsqueeze(1), index, num_groups)[index]
    return torch.where(constant | (std == 0), torch.zeros_like(centred), centred / (std + eps))


@register_adv_estimator("gdpo", scale_rewards=False, per_reward=True)
def gdpo(
    parts: Tensor,
    weights: Tensor,
    *,
    group_ids: Tensor,
    group_size: int,
    eps: float,
    applicable: Optional[Tensor] = None,
) -> Tensor:
    """GDPO: each reward function's scores normalized within the group on their own, summed with
    the functions' weights, then whitened over the batch of every process:
    A = (S - mean_batch S) / (std_batch S + eps), S_i = sum_k w_k (r_{k,i} - mean_g r_k) / (std_g r_k + eps)
    [GDPO, Liu et al. 2026, arXiv:2601.05242]. A function constant within a group adds 0 there; where
    a function did not apply (``applicable`` [K, N] False: it returned None) it adds 0 and stays out
    of its group's mean and std. parts [K, N], weights [K] -> [N]"""
    if applicable is None:
        applicable = torch.ones_like(parts, dtype=torch.bool)
    normalized = torch.stack(
        [_normalize_where_applicable(part, ok, group_ids, eps) for part, ok in zip(parts, applicable)]
    )  # [K, N]
    summed = (weights.to(normalized.dtype).unsqueeze(1) * normalized).sum(dim=0)  # [N]
    mean, std = global_mean_std(summed)
    centred = summed - mean
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


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Each row's group as 0..K-1, and K."""
    _, index = torch.unique(group_ids, return_inverse=True)  # [N]
    return index, (int(index.max()) + 1 if index.numel() else 0)


def _constant_in_group(values: Tensor, counted: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """[K] True where every counted value of the group is equal (or none is counted)."""
    zeros = values.new_zeros(num_groups)
    high = zeros.scatter_reduce(
        0, index, values.masked_fill(~counted, float("-inf")).amax(dim=1), reduce="amax", include_self=False
    )
    low = zeros.scatter_reduce(
        0, index, values.masked_fill(~counted, float("inf")).amin(dim=1), reduce="amin", include_self=False
    )
    return high <= low


def _scale_centred(
    centred: Tensor, counted: Tensor, index: Tensor, num_groups: int, eps: float, scale_rewards: str
) -> Tensor:
    """Centred values [N, T] (0 where not counted) divided by the population std of the counted
    values of their group (``group``), of the whole batch over every process (``batch``), or not
    at all (``none``)."""
    if scale_rewards == "group":
        zeros = centred.new_zeros(num_groups)
        count = zeros.index_add(0, index, counted.sum(dim=1).to(centred.dtype)).clamp(min=1)  # [K]
        var = zeros.index_add(0, index, centred.square().sum(dim=1)) / count  # [K]
        std = var.sqrt()[index].unsqueeze(1)  # [N, 1]
        return torch.where(std > 0, centred / (std + eps), centred)
    if scale_rewards == "batch":
        std = global_mean_std(centred, counted)[1]  # every process's counted values; mean 0
        return torch.where(std > 0, centred / (std + eps), centred)
    return centred


def last_token_index(mask: Tensor) -> Tensor:
    """[N] position of each row's last valid token (0 for a row without one).  [N, T] -> [N]"""
    positions = torch.arange(mask.size(1), device=mask.device)
    return torch.where(mask > 0, positions, 0).amax(dim=1)


def outcome_at_last_token(rewards: Tensor, mask: Tensor) -> Tensor:
    """Each completion's outcome reward on its last valid token, 0 elsewhere.  [N], [N, T] -> [N, T]"""
    placed = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    has_tokens = (mask > 0).any(dim=1)  # [N]
    rows = torch.arange(mask.size(0), device=mask.device)[has_tokens]
    placed[rows, last_token_index(mask)[has_tokens]] = rewards[has_tokens]
    return placed


def default_step_mask(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """Where the steps of process supervision end when the batch does not say: every valid token
    with a non-zero reward, and each completion's last valid token (its final step, whose reward
    may be 0).  [N, T] -> [N, T] bool"""
    valid = mask > 0
    steps = valid & (token_rewards != 0)
    has_tokens = valid.any(dim=1)
    rows = torch.arange(mask.size(0), device=mask.device)[has_tokens]
    steps[rows, last_token_index(mask)[has_tokens]] = True
    return steps


class TokenAdvantage(Protocol):
    def __call__(
        self,
        token_rewards: Tensor,
        mask: Tensor,
        *,
        step_mask: Optional[Tensor],
        group_ids: Tensor,
        gamma: float,
        eps: float,
        scale_rewards: str,
    ) -> Tensor: ...


TOKEN_ADVANTAGES: Registry[TokenAdvantage] = Registry("token-level advantage form")
"""How the group estimators turn token-level rewards into advantages (``algorithm.token_advantage``)."""


@TOKEN_ADVANTAGES.register("process_supervision")
def process_supervision_advantages(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    step_mask: Optional[Tensor],
    group_ids: Tensor,
    gamma: float,
    eps: float,
    scale_rewards: str = "group",
) -> Tensor:
    """Process supervision [GRPO, section 4.1.3]: step rewards normalized over all steps of the
    group, r~ = (r - mean(R)) / (std(R) + eps) (``group``; ``batch``: std over every step of the
    batch; ``none``: centred only), then A_t = sum over steps ending at k >= t of gamma^(k - t) r~_k.

    Args:
        token_rewards: [N, T] reward of each step, at the step's last token.
        mask: [N, T] 1 on completion tokens.
        step_mask: [N, T] where steps end, or None for :func:`default_step_mask`.
    Returns:
        advantages [N, T], 0 on padding; a group whose step rewards are all equal gets exactly 0.
    """
    valid = mask > 0
    token_rewards = torch.where(valid, token_rewards, 0.0)  # padding may hold NaN (external batches)
    steps = default_step_mask(token_rewards, mask) if step_mask is None else step_mask.bool() & valid  # [N, T]
    index, num_groups = _group_index(group_ids)
    zeros = token_rewards.new_zeros(num_groups)
    count = zeros.index_add(0, index, steps.sum(dim=1).to(token_rewards.dtype)).clamp(min=1)  # [K] steps
    mean = zeros.index_add(0, index, torch.where(steps, token_rewards, 0.0).sum(dim=1)) / count  # [K]
    centred = torch.where(steps, token_rewards - mean[index].unsqueeze(1), 0.0)  # [N, T]
    centred = centred.masked_fill(_constant_in_group(token_rewards, steps, index, num_groups)[index].unsqueeze(1), 0.0)
    normalized = _scale_centred(centred, steps, index, num_groups, eps, scale_rewards)  # [N, T], 0 off steps
    return discounted_returns(normalized, mask.to(normalized.dtype), gamma)


@TOKEN_ADVANTAGES.register("normalized_returns")
def token_level_advantages(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    group_ids: Tensor,
    gamma: float,
    eps: float,
    scale_rewards: str = "group",
    step_mask: Optional[Tensor] = None,
) -> Tensor:
    """Per-token returns first, then centred on the mean over all valid tokens of each group and
    scaled by the std of those tokens (``group``), of all valid tokens of the batch (``batch``),
    or not at all (``none``). ``step_mask`` is not used: every token's return counts.

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
    index, num_groups = _group_index(group_ids)
    zeros = returns.new_zeros(num_groups)
    count = zeros.index_add(0, index, mask.sum(dim=1)).clamp(min=1)  # [K] valid tokens
    mean = zeros.index_add(0, index, returns.sum(dim=1)) / count  # [K]
    centred = (returns - mean[index].unsqueeze(1)) * mask  # [N, T]
    # A group whose valid returns are all equal carries no signal: exactly 0, not the float
    # noise of its mean divided by a near-zero std.
    centred = centred.masked_fill(_constant_in_group(returns, valid, index, num_groups)[index].unsqueeze(1), 0.0)
    return _scale_centred(centred, valid, index, num_groups, eps, scale_rewards)


TOKEN_LEVEL_SCALE = {"grpo": None, "grpo_vectorized": None, "dr_grpo": "none"}
"""Group estimators whose token-level form is ``algorithm.token_advantage``, and the scale each
forces (None: ``algorithm.scale_rewards``). Per-token estimators (:data:`PER_TOKEN`) take token
rewards themselves."""
KL_IN_PROCESS_REWARDS = (
    "algorithm.kl_in_reward puts a KL cost on every token, but with token_rewards and "
    "algorithm.token_advantage=process_supervision only the steps carry rewards; set "
    "algorithm.token_advantage=normalized_returns, or keep the KL in the loss (algorithm.kl_in_reward=false)"
)


def estimator_token_rewards(
    estimator: str,
    rewards: Tensor,
    token_rewards: Optional[Tensor],
    mask: Tensor,
    *,
    kl_in_reward: bool,
    token_advantage: str,
) -> Optional[Tensor]:
    """The token rewards [N, T] ``estimator`` works on, before any KL cost: the batch's own, or for
    a per-token estimator each outcome reward on its last token; None for an outcome estimator
    on outcome rewards. Refuses a KL cost that the token-level form could not place."""
    if estimator in PER_TOKEN:
        return outcome_at_last_token(rewards, mask) if token_rewards is None else token_rewards
    if token_rewards is not None and kl_in_reward and token_advantage == "process_supervision":
        raise ValueError(KL_IN_PROCESS_REWARDS)
    return token_rewards


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
    token_advantage: str = "process_supervision",
    step_mask: Optional[Tensor] = None,
    reward_parts: Optional[tuple[Tensor, Tensor, Tensor]] = None,
) -> Tensor:
    """The advantages of one batch: [B] from outcome rewards [B] by an outcome ``estimator``;
    [B, T] by a per-token estimator, or from token-level rewards [B, T] (when given) by the
    ``token_advantage`` form, scaled as the estimator does. ``token_rewards`` are
    :func:`estimator_token_rewards`' (KL cost included under ``kl_in_reward``); ``reward_parts`` each
    reward function's scores [K, B], weights [K] and where each applied [K, B], for a per-reward
    estimator."""
    if estimator in PER_REWARD:
        if token_rewards is not None:
            raise ValueError(
                f"algorithm.adv_estimator={estimator} normalizes each reward function's episode score; this batch "
                "carries token-level rewards (an agent's turn rewards, or token_rewards), which it would drop: use "
                "adv_estimator=grpo, or return one reward per episode"
            )
        if reward_parts is None:
            raise ValueError(
                f"algorithm.adv_estimator={estimator} needs each reward function's scores; this batch has only "
                "their total (rollouts from elsewhere): use adv_estimator=grpo for it"
            )
        parts, weights, applicable = reward_parts
        return get_adv_estimator(estimator)(
            parts, weights, group_ids=group_ids, group_size=group_size, eps=eps, applicable=applicable
        )  # [B]
    if estimator in PER_TOKEN:
        if token_rewards is None:
            token_rewards = outcome_at_last_token(rewards, mask)
        return get_adv_estimator(estimator)(
            token_rewards, mask, group_ids=group_ids, group_size=group_size, eps=eps, gamma=gamma
        )  # [B, T]
    if token_rewards is None:
        return compute_advantages(
            estimator, rewards, group_ids=group_ids, group_size=group_size, eps=eps, scale_rewards=scale_rewards
        )  # [B]
    if estimator not in TOKEN_LEVEL_SCALE:
        raise ValueError(
            f"this batch carries token_rewards, which algorithm.adv_estimator={estimator} does not handle; "
            f"use one of {sorted(set(TOKEN_LEVEL_SCALE) | PER_TOKEN)}"
        )
    scale = TOKEN_LEVEL_SCALE[estimator] or scale_rewards
    form = TOKEN_ADVANTAGES.lookup(token_advantage)
    return form(
        token_rewards, mask, step_mask=step_mask, group_ids=group_ids, gamma=gamma, eps=eps, scale_rewards=scale
    )  # [B, T]
