"""The policy objective as small, separately tested pieces, composed by config.

Per completion token t of sequence i, with ratio r = pi(o_t) / pi_old(o_t) and advantage A:

    loss_t = policy_loss_t + beta * kl_t - entropy_coef * entropy_t
    loss   = aggregate(loss_t)                                  (algorithm.loss_agg)

* policy losses (``algorithm.policy_loss``, registry :data:`POLICY_LOSSES`):
  ``clip``  -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)                       [PPO, DAPO]
            with dual-clip: for A < 0 the loss is capped at -c A            [Ye et al. 2020]
  ``gspo``  the same with the sequence ratio s_i = exp(mean_t log r_{i,t})     [GSPO]
  ``cispo`` -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi                         [CISPO]
  ``sapo``  -(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos (A > 0) or tau_neg        [SAPO]
  ``gmpo``  -A exp(mean_t sgn(A) min(sgn(A) log r_t, sgn(A) clip(log r_t, -eps_low, eps_high)))
            per sequence: the geometric mean of the token ratios                [GMPO]
  ``clip_cov``  PPO's clip, plus no gradient for a random fraction of the tokens whose
            covariance (A - mean A)(log pi - mean log pi) lies in [lb, ub]  [Cov]
  ``kl_cov``    -r A, plus coef |log r| on the top fraction of tokens by that covariance [Cov]
* aggregations (``algorithm.loss_agg``, registry :data:`LOSS_AGGREGATIONS`)
* KL estimators k1 / k2 / k3 (``algorithm.kl_estimator``, :mod:`grpo_lightning.algo.kl`)

Formulas and differences from TRL / verl: docs/algorithms.md. Every loss class returns
``(loss, stats)`` with detached scalar stats, and lists the names of the stats it reports in
``stat_names`` (only what it computes; the module declares them up front for logging).

References:
  [GRPO] Shao et al. 2024, arXiv:2402.03300.     [PPO]  Schulman et al. 2017, arXiv:1707.06347.
  [DAPO] Yu et al. 2025, arXiv:2503.14476.       [GSPO] Zheng et al. 2025, arXiv:2507.18071.
  [CISPO] MiniMax 2025, arXiv:2506.13585.        [Dual-clip] Ye et al. 2020, arXiv:1912.09729.
  [Dr. GRPO] Liu et al. 2025, arXiv:2503.20783.
  [SAPO] Qwen team 2025, Soft Adaptive Policy Optimization, arXiv:2511.20347.
  [GMPO] Geometric-Mean Policy Optimization 2025, arXiv:2507.20673.
  [Cov]  Cui et al. 2025, The Entropy Mechanism of RL for Reasoning LMs, arXiv:2505.22617.
  [80/20] Wang et al. 2025, Beyond the 80/20 Rule: high-entropy minority tokens, arXiv:2506.01939.

Departures from the GRPO paper: the entropy bonus is ours (0 recovers the paper); log-probs are
those of the temperature-scaled sampling distribution (top-k / top-p truncation is not
reflected, as in TRL and verl).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
from torch import Tensor

from grpo_lightning.algo.kl import KLEstimator, kl_k3
from grpo_lightning.algo.registry import Registry

__all__ = [
    "grpo_loss",
    "policy_objective",
    "masked_mean",
    "sequence_then_token_mean",
    "kl_k3",
    "POLICY_LOSSES",
    "register_policy_loss",
    "get_policy_loss",
    "ClippedSurrogate",
    "GSPOLoss",
    "CISPOLoss",
    "SAPOLoss",
    "GMPOLoss",
    "ClipCovLoss",
    "KLCovLoss",
    "token_covariance",
    "build_policy_loss",
    "LOSS_AGGREGATIONS",
    "LossAggregation",
    "get_loss_aggregation",
]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (all tokens of all sequences)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def scored_rows(mask: Tensor) -> Tensor:
    """[B] 1 for each sequence with at least one valid token, else 0 (a fully masked one, e.g. a
    truncated completion under mask_truncated_completions, is not part of a mean over sequences)."""
    return (mask.sum(dim=1) > 0).to(mask.dtype)


def scored_sequences(mask: Tensor) -> Tensor:
    """How many sequences have at least one valid token (see :func:`scored_rows`)."""
    return scored_rows(mask).sum()


def sequence_then_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over each sequence's valid tokens, then over sequences.  values, mask: [B, T]."""
    per_sequence = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
    return per_sequence.sum() / scored_sequences(mask).clamp(min=1)


# -- loss aggregation ------------------------------------------------------------------------


@dataclass(frozen=True)
class LossAggregation:
    """How per-token values [B, T] become the scalar loss.

    ``reduce(values, mask, max_length)`` gives the scalar; ``by_tokens`` says whether it is a
    mean over tokens (True) or over sequences (False), which is what gradient accumulation over
    micro-batches must weight by to reproduce the mini-batch's value exactly.
    """

    reduce: Callable[[Tensor, Tensor, int], Tensor]
    by_tokens: bool

    def __call__(self, values: Tensor, mask: Tensor, max_length: int) -> Tensor:
        return self.reduce(values, mask, max_length)

    def units(self, mask: Tensor) -> Tensor:
        """What the mean runs over in ``mask`` [B, T]: valid tokens, or sequences with any."""
        return mask.sum() if self.by_tokens else scored_sequences(mask)


LOSS_AGGREGATIONS: Registry[LossAggregation] = Registry("loss aggregation")
LOSS_AGGREGATIONS.update(
    {
        # Original GRPO: each sequence weighs the same, so a token of a long sequence weighs less.
        "seq-mean-token-mean": LossAggregation(lambda v, m, L: sequence_then_token_mean(v, m), by_tokens=False),
        # DAPO: each token weighs the same; long sequences weigh more in total.
        "token-mean": LossAggregation(lambda v, m, L: masked_mean(v, m), by_tokens=True),
        # Sum over tokens: the loss and gradient grow with the length of the sequence.
        "seq-mean-token-sum": LossAggregation(
            lambda v, m, L: (v * m).sum() / scored_sequences(m).clamp(min=1), by_tokens=False
        ),
        # Dr. GRPO: the token sum divided by a constant (the max completion length): no length bias.
        "seq-mean-token-sum-norm": LossAggregation(
            lambda v, m, L: (v * m).sum() / scored_sequences(m).clamp(min=1) / L, by_tokens=False
        ),
    }
)


def get_loss_aggregation(name: str) -> LossAggregation:
    return LOSS_AGGREGATIONS.lookup(name)


Aggregate = Callable[[Tensor, Tensor], Tensor]
"""``aggregate(values [B, T], mask [B, T]) -> scalar``: a LossAggregation with its max length bound."""


# -- policy losses ---------------------------------------------------------------------------


class PolicyLoss(Protocol):
    """``loss(logprobs, old_logprobs, advantages, mask, aggregate) -> (loss, stats)``.

    logprobs [B, T] (with grad), old_logprobs [B, T] (no grad), advantages [B, 1] or [B, T],
    mask [B, T] float. ``stats`` are detached scalars named in ``stat_names``.
    """

    stat_names: tuple[str, ...]

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


POLICY_LOSSES: Registry[Callable[..., PolicyLoss]] = Registry("policy loss")


def register_policy_loss(name: str):
    """Decorator: make a loss class selectable as ``algorithm.policy_loss=<name>``.

    The class is built with ``cls.from_config(algorithm)`` (a :class:`GRPOConfig`) when it has
    that classmethod, else with no arguments.
    """

    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str):
    return POLICY_LOSSES.lookup(name)


def _clip_bounds(alg) -> tuple[float, float]:
    low = alg.clip_range if alg.clip_range_low is None else alg.clip_range_low
    high = alg.clip_range if alg.clip_range_high is None else alg.clip_range_high
    return low, high


def _ratio_stats(log_ratio: Tensor, ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    return {"approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask), "ratio_mean": masked_mean(ratio, mask)}


@register_policy_loss("clip")
class ClippedSurrogate:
    """PPO's clipped surrogate, with asymmetric bounds (DAPO clip-higher) and optional dual-clip.

    Per token: -min(r A, clip(r, 1 - low, 1 + high) A); with ``clip_ratio_c`` = c > 1, tokens
    with A < 0 are further capped at -c A (a huge ratio on a bad token cannot blow up the loss).
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.2, clip_ratio_c: Optional[float] = None):
        self.clip_low, self.clip_high, self.clip_ratio_c = clip_low, clip_high, clip_ratio_c
        self.stat_names = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean") + (
            ("dual_clip_frac",) if clip_ratio_c is not None else ()
        )

    @classmethod
    def from_config(cls, alg) -> "ClippedSurrogate":
        return cls(*_clip_bounds(alg), clip_ratio_c=alg.clip_ratio_c)

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs  # [B, T]
        ratio = torch.exp(log_ratio)  # [B, T]
        clipped_ratio = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        per_token = -torch.minimum(ratio * advantages, clipped_ratio * advantages)  # [B, T]
        clipped = ((ratio > 1.0 + self.clip_high) & (advantages > 0)) | (
            (ratio < 1.0 - self.clip_low) & (advantages < 0)
        )
        stats = {}
        if self.clip_ratio_c is not None:
            cap = -self.clip_ratio_c * advantages  # [B, 1] or [B, T]
            dual = (advantages < 0) & (per_token > cap)
            per_token = torch.where(dual, cap.expand_as(per_token), per_token)
            stats["dual_clip_frac"] = masked_mean(dual.to(mask.dtype), mask)
        loss = aggregate(per_token, mask)
        stats |= {"policy_loss": loss, "clip_frac": masked_mean(clipped.to(mask.dtype), mask)}
        return loss, stats | _ratio_stats(log_ratio, ratio, mask)


@register_policy_loss("gspo")
class GSPOLoss:
    """GSPO: the clipped surrogate on the sequence ratio s_i = exp(mean_t log r_{i,t}).

    Implemented in the paper's GSPO-token form: s_{i,t} = sg(s_i) * pi(o_t) / sg(pi(o_t)) has the
    value s_i and the gradient s_i * grad log pi(o_t), so with sequence advantages and
    ``seq-mean-token-mean`` it equals GSPO exactly, and it also accepts token advantages.
    ``clip_frac`` is the fraction of clipped sequences (the unit GSPO clips).
    """

    stat_names = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean")

    def __init__(self, clip_low: float = 3e-4, clip_high: float = 4e-4):
        self.clip_low, self.clip_high = clip_low, clip_high

    @classmethod
    def from_config(cls, alg) -> "GSPOLoss":
        return cls(*_clip_bounds(alg))

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs  # [B, T]
        seq_log_ratio = (log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
        token_log_s = seq_log_ratio.detach().unsqueeze(1) + logprobs - logprobs.detach()
        s = torch.exp(token_log_s)  # [B, T], value s_i
        clipped_s = s.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        per_token = -torch.minimum(s * advantages, clipped_s * advantages)  # [B, T]
        seq_ratio = torch.exp(seq_log_ratio.detach())  # [B]
        seq_adv = (advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
        clipped = ((seq_ratio > 1.0 + self.clip_high) & (seq_adv > 0)) | (
            (seq_ratio < 1.0 - self.clip_low) & (seq_adv < 0)
        )
        loss = aggregate(per_token, mask)
        scored = scored_rows(mask)  # [B]
        return loss, {
            "policy_loss": loss,
            "clip_frac": masked_mean(clipped.to(mask.dtype), scored),
            "approx_kl": masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(seq_ratio, scored),
        }


@register_policy_loss("cispo")
class CISPOLoss:
    """CISPO: -sg(clip(r, 1 - low, 1 + high)) * A * log pi(o_t).

    The importance weight is clipped and detached, so every token keeps a gradient (PPO drops
    the clipped ones). ``clip_frac`` is the fraction of tokens whose weight was clipped.
    """

    stat_names = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean")

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.2):
        self.clip_low, self.clip_high = clip_low, clip_high

    @classmethod
    def from_config(cls, alg) -> "CISPOLoss":
        return cls(*_clip_bounds(alg))

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs  # [B, T]
        ratio = torch.exp(log_ratio.detach())  # [B, T]
        weight = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)  # [B, T], no grad
        per_token = -weight * advantages * logprobs  # [B, T]
        clipped = (ratio > 1.0 + self.clip_high) | (ratio < 1.0 - self.clip_low)
        loss = aggregate(per_token, mask)
        return loss, {"policy_loss": loss, "clip_frac": masked_mean(clipped.to(mask.dtype), mask)} | _ratio_stats(
            log_ratio.detach(), ratio, mask
        )


@register_policy_loss("sapo")
class SAPOLoss:
    """SAPO: a smooth gate instead of the hard clip, -(4 / tau) sigmoid(tau (r - 1)) A per token.

    The gate's slope is 1 at r = 1 (the gradient of PPO there) and fades as r leaves 1, faster
    for negative advantages (tau_neg > tau_pos); no token's gradient is cut to 0 at a boundary.
    ``clip_frac`` is not defined (nothing is clipped): reported is ``gate_mean``, the mean slope
    4 sigmoid (1 - sigmoid) of the gate (1 on policy)."""

    stat_names = ("policy_loss", "gate_mean", "approx_kl", "ratio_mean")

    def __init__(self, temperature_pos: float = 1.0, temperature_neg: float = 1.05):
        self.temperature_pos, self.temperature_neg = temperature_pos, temperature_neg

    @classmethod
    def from_config(cls, alg) -> "SAPOLoss":
        return cls(alg.sapo_temperature_pos, alg.sapo_temperature_neg)

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs  # [B, T]
        ratio = torch.exp(log_ratio)
        tau = torch.where(advantages > 0, self.temperature_pos, self.temperature_neg)  # [B, 1] or [B, T]
        gate = torch.sigmoid(tau * (ratio - 1.0))  # [B, T]
        per_token = -(4.0 / tau) * gate * advantages
        loss = aggregate(per_token, mask)
        slope = (4.0 * gate * (1.0 - gate)).detach()
        return loss, {"policy_loss": loss, "gate_mean": masked_mean(slope, mask)} | _ratio_stats(log_ratio, ratio, mask)


@register_policy_loss("gmpo")
class GMPOLoss:
    """GMPO: the geometric mean of the token ratios, each clipped in log space to [-low, high]
    on the side the advantage pushes, times the sequence advantage: -A_i exp(mean_t l_{i,t}).

    The value of the loss is per sequence (spread over its tokens, so ``seq-mean-token-mean`` takes
    the mean over sequences, as the paper's objective). ``clip_frac`` is the fraction of tokens
    whose log ratio was clipped; ``ratio_mean`` the mean sequence ratio."""

    stat_names = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean")

    def __init__(self, clip_low: float = 0.4, clip_high: float = 0.4):
        self.clip_low, self.clip_high = clip_low, clip_high

    @classmethod
    def from_config(cls, alg) -> "GMPOLoss":
        return cls(*_clip_bounds(alg))

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs  # [B, T]
        lengths = mask.sum(dim=1).clamp(min=1)  # [B]
        seq_adv = (advantages.expand_as(log_ratio) * mask).sum(dim=1) / lengths  # [B]
        sign = torch.where(seq_adv >= 0, 1.0, -1.0).unsqueeze(1)  # [B, 1]
        clipped = log_ratio.clamp(-self.clip_low, self.clip_high)
        kept = sign * torch.minimum(sign * log_ratio, sign * clipped)  # [B, T]
        seq_ratio = torch.exp((kept * mask).sum(dim=1) / lengths)  # [B]
        per_token = (-seq_adv * seq_ratio).unsqueeze(1).expand_as(log_ratio)
        loss = aggregate(per_token, mask)
        scored = scored_rows(mask)
        return loss, {
            "policy_loss": loss,
            "clip_frac": masked_mean((kept != log_ratio).to(mask.dtype), mask),
            "approx_kl": masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(seq_ratio.detach(), scored),
        }


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """(A_t - mean A)(log pi_t - mean log pi) per token, means over the valid tokens [Cov].
    [B, T] (advantages [B, 1] or [B, T]) -> [B, T], no grad, -inf on padding."""
    advantages = advantages.expand_as(logprobs).detach()
    logprobs = logprobs.detach()
    cov = (advantages - masked_mean(advantages, mask)) * (logprobs - masked_mean(logprobs, mask))
    return cov.masked_fill(mask <= 0, float("-inf"))


@register_policy_loss("clip_cov")
class ClipCovLoss:
    """Clip-Cov: PPO's clipped surrogate; then, of the tokens the clip left alone whose covariance
    lies in (lb, ub), a random max(1, int(ratio * valid tokens)) get no gradient at all (their
    loss is multiplied by 0). Draws from torch's global generator. ``clip_frac`` counts both."""

    stat_names = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean")

    def __init__(self, clip_low=0.2, clip_high=0.2, ratio=2e-4, lower=1.0, upper=5.0):
        self.clip_low, self.clip_high = clip_low, clip_high
        self.ratio, self.lower, self.upper = ratio, lower, upper

    @classmethod
    def from_config(cls, alg) -> "ClipCovLoss":
        return cls(*_clip_bounds(alg), alg.clip_cov_ratio, alg.clip_cov_lb, alg.clip_cov_ub)

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs
        ratio = torch.exp(log_ratio)
        unclipped, clipped_value = (
            ratio * advantages,
            ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high) * advantages,
        )
        by_clip = (clipped_value < unclipped).detach()  # PPO's min takes the clipped term
        cov = token_covariance(logprobs, advantages, mask).masked_fill(by_clip, float("-inf"))
        candidates = ((cov > self.lower) & (cov < self.upper)).nonzero()  # [n, 2]
        count = min(max(int(self.ratio * mask.sum().item()), 1), candidates.size(0))
        chosen = candidates[torch.randperm(candidates.size(0), device=candidates.device)[:count]]
        keep = torch.ones_like(mask)
        keep[chosen[:, 0], chosen[:, 1]] = 0.0
        per_token = -torch.minimum(unclipped, clipped_value) * keep
        loss = aggregate(per_token, mask)
        return loss, {"policy_loss": loss, "clip_frac": masked_mean((by_clip | (keep == 0)).to(mask.dtype), mask)} | (
            _ratio_stats(log_ratio, ratio, mask)
        )


@register_policy_loss("kl_cov")
class KLCovLoss:
    """KL-Cov: -r A on every token (no clip), plus coef |log r| on the max(1, int(ratio * valid
    tokens)) tokens of highest covariance. ``clip_frac`` is the fraction of tokens penalized."""

    stat_names = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean")

    def __init__(self, ratio: float = 2e-3, coef: float = 1.0):
        self.ratio, self.coef = ratio, coef

    @classmethod
    def from_config(cls, alg) -> "KLCovLoss":
        return cls(alg.kl_cov_ratio, alg.kl_cov_coef)

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregate: Aggregate
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = logprobs - old_logprobs
        ratio = torch.exp(log_ratio)
        cov = token_covariance(logprobs, advantages, mask).view(-1)
        count = min(max(int(self.ratio * mask.sum().item()), 1), int(mask.sum().item()))
        penalized = torch.zeros_like(cov)
        penalized[cov.topk(count).indices] = 1.0
        penalized = penalized.view_as(mask)
        per_token = -ratio * advantages + self.coef * log_ratio.abs() * penalized
        loss = aggregate(per_token, mask)
        return loss, {"policy_loss": loss, "clip_frac": masked_mean(penalized, mask)} | _ratio_stats(
            log_ratio, ratio, mask
        )


def build_policy_loss(name: str, alg) -> PolicyLoss:
    cls = get_policy_loss(name)
    return cls.from_config(alg) if hasattr(cls, "from_config") else cls()


# -- the whole objective ---------------------------------------------------------------------


def top_entropy_tokens(entropy: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """1 on the max(1, round(fraction * n)) of the n valid tokens with the highest entropy (ties at
    the threshold kept), 0 elsewhere [80/20].  [B, T] -> [B, T]

    >>> top_entropy_tokens(torch.tensor([[0.1, 2.0, 0.5, 9.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 0.34)
    tensor([[0., 1., 0., 0.]])
    """
    valid = mask > 0
    values = entropy.detach()[valid]
    if values.numel() == 0:
        return torch.zeros_like(mask)
    keep = max(1, round(fraction * values.numel()))
    threshold = values.topk(keep).values.min()
    return ((entropy.detach() >= threshold) & valid).to(mask.dtype)


def policy_objective(
    policy_loss: PolicyLoss,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: LossAggregation = LOSS_AGGREGATIONS["seq-mean-token-mean"],
    max_length: Optional[int] = None,
    ref_logprobs: Optional[Tensor] = None,
    kl_estimator: KLEstimator = kl_k3,
    beta: float = 0.0,
    entropy: Optional[Tensor] = None,
    entropy_coef: float = 0.0,
    top_entropy_fraction: Optional[float] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """policy loss + beta * KL - entropy_coef * entropy, all aggregated the same way.

    Args:
        logprobs, old_logprobs: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        max_length: the constant of ``seq-mean-token-sum-norm`` (default: T).
        ref_logprobs: [B, T] under the frozen reference; None skips the KL term.
        entropy: [B, T]; None skips it. With entropy_coef = 0 it is only reported.
        top_entropy_fraction: only this fraction of the tokens, those of highest entropy in the
            batch given, get the policy-gradient term (:func:`top_entropy_tokens`); None: all.
    Returns:
        (loss, stats): the policy loss's stats, plus grpo_kl / kl_penalty / entropy when given.
    """
    mask = mask.to(logprobs.dtype)
    valid = mask > 0
    # Padding holds whatever each pass left there (a pad token's log-prob, 0 from a bucketed
    # pass, -inf from an external batch). Masking by multiplication does not stop an inf
    # (inf * 0 = NaN, in the gradient too), so padding gets the current log-probs: ratio 1, KL 0.
    current = logprobs.detach()
    old_logprobs = torch.where(valid, old_logprobs, current)
    if ref_logprobs is not None:
        ref_logprobs = torch.where(valid, ref_logprobs, current)
    if entropy is not None:
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [B, 1]
    else:
        advantages = torch.where(valid, advantages, torch.zeros_like(advantages))
    length = max_length or mask.size(1)

    def aggregate(values: Tensor, m: Tensor) -> Tensor:
        return aggregation(values, m, length)

    if top_entropy_fraction is not None:
        if entropy is None:
            raise ValueError("top_entropy_fraction needs the tokens' entropy")
        advantages = advantages * top_entropy_tokens(entropy, mask, top_entropy_fraction)  # [B, T]
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, aggregate)
    # The loss terms are aggregated as the loss is; grpo_kl and entropy are reported as token
    # means whatever the aggregation (a token sum would scale them with the length).
    if ref_logprobs is not None:
        kl = kl_estimator(logprobs, ref_logprobs)  # [B, T]
        kl_term = beta * aggregate(kl, mask)
        loss = loss + kl_term
        stats |= {"grpo_kl": masked_mean(kl, mask), "kl_penalty": kl_term}
    if entropy is not None:
        if entropy_coef != 0:
            loss = loss - entropy_coef * aggregate(entropy, mask)
        stats["entropy"] = masked_mean(entropy, mask)
    return loss, {name: value.detach() for name, value in stats.items()}


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
    """The GRPO paper's loss: clipped surrogate, k3 KL, sequence-then-token mean.

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
    return policy_objective(
        ClippedSurrogate(clip_range, clip_range),
        logprobs,
        old_logprobs,
        advantages,
        mask,
        ref_logprobs=ref_logprobs,
        kl_estimator=kl_k3,
        beta=beta,
        entropy=entropy,
        entropy_coef=entropy_coef,
    )
