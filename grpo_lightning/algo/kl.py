"""Per-token estimators of KL(pi || pi_ref) from the log-probs of sampled tokens [k-estimators].

With x = log pi_ref(o_t) - log pi(o_t) for tokens o_t sampled from pi:

    k1 = -x                      unbiased, can be negative, high variance
    k2 = x^2 / 2                 biased, >= 0, low variance
    k3 = exp(x) - x - 1          unbiased, >= 0, low variance   (the GRPO paper's choice)

Reference: Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.
Register more with :func:`register_kl_estimator`; pick one with ``algorithm.kl_estimator``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from grpo_lightning.algo.registry import Registry

KLEstimator = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


def register_kl_estimator(name: str) -> Callable[[KLEstimator], KLEstimator]:
    """Decorator: make ``fn(logprobs [B, T], ref_logprobs [B, T]) -> [B, T]`` selectable by name."""
    return KL_ESTIMATORS.register(name)


def get_kl_estimator(name: str) -> KLEstimator:
    return KL_ESTIMATORS.lookup(name)


@register_kl_estimator("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """log pi - log pi_ref.  [B, T] -> [B, T]"""
    return logprobs - ref_logprobs


@register_kl_estimator("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """(log pi - log pi_ref)^2 / 2.  [B, T] -> [B, T]"""
    return 0.5 * (logprobs - ref_logprobs).square()


@register_kl_estimator("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """exp(x) - x - 1 with x = log pi_ref - log pi: unbiased, always >= 0.  [B, T] -> [B, T]"""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def kl_penalized_rewards(
    rewards: Tensor, token_rewards: Optional[Tensor], kl: Tensor, mask: Tensor, beta: float
) -> tuple[Tensor, Optional[Tensor]]:
    """``kl_in_reward``: the KL as a cost in the reward instead of a term of the loss.

    Args:
        rewards: [B] outcome rewards; become r_i - beta * sum_t kl_{i,t}.
        token_rewards: [B, T] or None; become r_{i,t} - beta * kl_{i,t}.
        kl: [B, T] per-token KL estimate (from the sampling policy's log-probs, no grad).
        mask: [B, T] 1 on completion tokens.
    """
    kl = kl * mask  # [B, T]
    penalized_tokens = None if token_rewards is None else token_rewards - beta * kl
    return rewards - beta * kl.sum(dim=1), penalized_tokens
