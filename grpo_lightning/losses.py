"""The GRPO objective as pure tensor functions [GRPO, Shao et al. 2024, arXiv:2402.03300, eq. 3].

Per completion token t of sequence i, with ratio r = pi(o_t) / pi_old(o_t) and advantage A:

    surrogate_t = -min(r * A, clip(r, 1 - eps, 1 + eps) * A)                 [PPO]
    kl_t        = exp(ref - logp) - (ref - logp) - 1                        [k3 estimator]
    loss_t      = surrogate_t + beta * kl_t - entropy_coef * entropy_t

    loss = mean_i ( mean_{t valid in i} loss_t )       (the paper's sequence-then-token mean)

Departures from the paper: the entropy bonus is ours (0 recovers the paper); log-probs are
those of the temperature-scaled sampling distribution (top-k / top-p truncation is not
reflected, as in TRL and verl).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (all tokens of all sequences)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def sequence_then_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over each sequence's valid tokens, then over sequences.  values, mask: [B, T]."""
    per_sequence = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)    # [B]
    return per_sequence.mean()


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): unbiased, always >= 0.  [B, T] -> [B, T]"""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Optional[Tensor] = None,
    entropy: Optional[Tensor] = None,
    clip_range: float = 0.2,
    beta: float = 0.01,
    entropy_coef: float = 0.01,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped GRPO loss and its detached statistics.

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: [B, T] the same under the policy that sampled them (no grad).
        advantages: [B] per sequence, or [B, T] per token.
        mask: [B, T] 1 on completion tokens, 0 on padding.
        ref_logprobs: [B, T] under the frozen reference; None skips the KL term.
        entropy: [B, T] per-token entropy of the current policy; None skips the bonus.

    Returns:
        (loss, stats) where stats holds detached scalars: policy_loss, clip_frac, approx_kl,
        ratio_mean, and grpo_kl / kl_penalty / entropy when their inputs are given.
    """
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)                                     # [B, 1]
    log_ratio = logprobs - old_logprobs                                          # [B, T]
    ratio = torch.exp(log_ratio)                                                 # [B, T]
    clipped_ratio = ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    surrogate = -torch.minimum(ratio * advantages, clipped_ratio * advantages)   # [B, T]
    per_token = surrogate
    stats: dict[str, Tensor] = {}

    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)                                       # [B, T]
        per_token = per_token + beta * kl
        stats["grpo_kl"] = masked_mean(kl, mask)
        stats["kl_penalty"] = beta * stats["grpo_kl"]
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy
        stats["entropy"] = masked_mean(entropy, mask)

    loss = sequence_then_token_mean(per_token, mask)
    clipped = ((ratio > 1.0 + clip_range) & (advantages > 0)) | ((ratio < 1.0 - clip_range) & (advantages < 0))
    stats["policy_loss"] = sequence_then_token_mean(surrogate, mask)
    stats["clip_frac"] = masked_mean(clipped.to(mask.dtype), mask)
    stats["approx_kl"] = masked_mean((ratio - 1.0) - log_ratio, mask)
    stats["ratio_mean"] = masked_mean(ratio, mask)
    return loss, {name: value.detach() for name, value in stats.items()}
