"""Rollout correction: the policy that sampled a batch is not quite the one the trainer scores it
with (another engine such as vLLM, bf16 sampling, a stale policy under async rollouts, rollouts
from elsewhere). With the sampler's log-probs q and the trainer's log-probs p of the same tokens,
taken before the update (the "old" policy of the PPO ratio), each correction turns the per-token
importance weight w = p / q into a weight of the token's policy-gradient term:

    tis       min(w, C)                                        [TIS] (rollout_is_cap = C)
    icepop    w where low <= w <= high, else 0                 [IcePop] (rollout_mask_low/high)
    seq_mask  0 for every token of a sequence with A < 0 whose mean per-token KL estimate
              mean_t (log q - log p) exceeds delta, else 1      [DeepSeek-V3.2] (rollout_seq_kl_threshold)

The weight multiplies the advantage (so every policy loss, the clipped surrogate, GSPO, CISPO...,
is scaled token by token, and the KL and entropy terms are not); a masked token keeps its place
in the loss's normalizer. Registered by name (``algorithm.rollout_correction``); user code may add
its own with :func:`register_rollout_correction`.

  [TIS]     Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training".
  [IcePop]  Ling team 2025, arXiv:2510.18855, section 3 (the masked weight M(k)).
  [DeepSeek-V3.2] DeepSeek-AI 2025, arXiv:2512.02556, "off-policy sequence masking".

Departure: the sequence KL is measured against the trainer's log-probs at the start of the update,
once per batch, not against the current policy in every mini-batch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from grpo_lightning.algo.registry import Registry

Correction = Callable[[Tensor, Tensor, Tensor, Tensor, Any], Tensor]
"""``correction(trainer_logprobs [B, T], sampler_logprobs [B, T], advantages [B, 1] or [B, T],
mask [B, T], alg) -> weights [B, T]`` (>= 0, no grad)."""

ROLLOUT_CORRECTIONS: Registry[Correction] = Registry("rollout correction")


def register_rollout_correction(name: str) -> Callable[[Correction], Correction]:
    """Decorator: make a correction selectable as ``algorithm.rollout_correction=<name>``."""
    return ROLLOUT_CORRECTIONS.register(name)


def importance_weights(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """w = p / q per token, 1 on padding.  [B, T]"""
    return torch.where(mask > 0, torch.exp(trainer_logprobs - sampler_logprobs), 1.0)


@register_rollout_correction("tis")
def truncated_importance_sampling(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, advantages: Tensor, mask: Tensor, alg: Any
) -> Tensor:
    return importance_weights(trainer_logprobs, sampler_logprobs, mask).clamp(max=alg.rollout_is_cap)


@register_rollout_correction("icepop")
def masked_importance_sampling(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, advantages: Tensor, mask: Tensor, alg: Any
) -> Tensor:
    weights = importance_weights(trainer_logprobs, sampler_logprobs, mask)
    inside = (weights >= alg.rollout_mask_low) & (weights <= alg.rollout_mask_high)
    return torch.where(inside, weights, 0.0)


REWEIGHTING = {"tis", "icepop"}
"""Corrections whose weight is the importance weight w, changed where they cap or mask it; the
others weigh 1 where they do not act (what ``rollout/corrected_frac`` compares against)."""


@register_rollout_correction("seq_mask")
def off_policy_sequence_mask(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, advantages: Tensor, mask: Tensor, alg: Any
) -> Tensor:
    mask = mask.to(trainer_logprobs.dtype)
    kl = ((sampler_logprobs - trainer_logprobs) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
    sequence_advantage = (advantages.expand_as(mask) * mask).sum(dim=1)  # [B], its sign
    dropped = (sequence_advantage < 0) & (kl > alg.rollout_seq_kl_threshold)  # [B]
    return (~dropped).to(mask.dtype).unsqueeze(1).expand_as(mask)


def correction_stats(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, weights: Tensor, mask: Tensor, reweights: bool = True
) -> dict[str, Tensor]:
    """What the gap and the correction look like, over the batch's valid tokens:
    ``rollout/logprob_gap`` mean |log p - log q|, ``rollout/is_ratio_mean`` and ``_max`` of w = p / q,
    ``rollout/corrected_frac`` the share of tokens the correction acted on (capped or masked: their
    weight differs from w, or with ``reweights=False`` from 1), ``rollout/ess`` the effective sample
    size of the weights, (sum w)^2 / (n sum w^2), 1 when all are equal."""
    valid = mask > 0
    raw = importance_weights(trainer_logprobs, sampler_logprobs, mask)[valid]
    applied = weights[valid]
    count = max(int(valid.sum()), 1)
    return {
        "rollout/logprob_gap": (trainer_logprobs - sampler_logprobs)[valid].abs().sum() / count,
        "rollout/is_ratio_mean": raw.sum() / count,
        "rollout/is_ratio_max": raw.max() if raw.numel() else raw.new_tensor(1.0),
        "rollout/corrected_frac": (applied != (raw if reweights else torch.ones_like(raw))).float().sum() / count,
        "rollout/ess": applied.sum().square() / (count * applied.square().sum()).clamp(min=1e-12),
    }


CORRECTION_METRICS = (
    "rollout/logprob_gap",
    "rollout/is_ratio_mean",
    "rollout/is_ratio_max",
    "rollout/corrected_frac",
    "rollout/ess",
)


def correct_advantages(
    name: str, trainer_logprobs: Tensor, sampler_logprobs: Tensor, advantages: Tensor, mask: Tensor, alg: Any
) -> tuple[Tensor, dict[str, Tensor]]:
    """Advantages ([B] or [B, T]) as [B, T], scaled token by token by the correction ``name``, and its
    statistics."""
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    weights = ROLLOUT_CORRECTIONS.lookup(name)(trainer_logprobs, sampler_logprobs, advantages, mask, alg)  # [B, T]
    stats = correction_stats(trainer_logprobs, sampler_logprobs, weights, mask, reweights=name in REWEIGHTING)
    return advantages * weights, stats
