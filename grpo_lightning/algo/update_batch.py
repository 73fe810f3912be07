"""From experience to the batch the policy update learns from: the old and reference log-probs
the configured loss needs (and only those), KL folded into the reward where asked, advantages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from grpo_lightning.algo.advantages import (
    PER_REWARD,
    batch_advantages,
    estimator_token_rewards,
    resolve_scale_rewards,
)
from grpo_lightning.algo.correction import correct_advantages
from grpo_lightning.algo.kl import KLEstimator, kl_penalized_rewards
from grpo_lightning.algo.turns import turn_token_rewards
from grpo_lightning.types import Experience, TokenBatch, UpdateBatch

Score = Callable[[TokenBatch, bool], Tensor]
"""``score(tokens, reference) -> log-probs [B, T]`` of the completion tokens under the current
policy (reference=False) or the frozen reference (True), without grad."""


def needs_old_logprobs(alg: Any, num_rows: int) -> bool:
    """Whether the sampling policy's log-probs must be kept apart from the current ones: after the
    first optimizer step of a batch the policy has moved, so a second pass or a second mini-batch
    needs them (and KL in the reward is taken against them). With one pass and one mini-batch they
    are the current log-probs, detached: the ratio is 1 and its gradient REINFORCE's.

    >>> from types import SimpleNamespace as S
    >>> needs_old_logprobs(S(num_iterations=1, mini_batch_size=None, kl_in_reward=False), 8)
    False
    >>> needs_old_logprobs(S(num_iterations=1, mini_batch_size=4, kl_in_reward=False), 8)
    True
    """
    return alg.num_iterations > 1 or (alg.mini_batch_size or num_rows) < num_rows or alg.kl_in_reward


def reward_parts(experience: Experience) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """Each reward function's scores [K, B], weights [K] and where it applied [K, B], where the
    experience was scored here."""
    scores = experience.scores
    if scores is None or not scores.per_function:
        return None
    names = list(scores.per_function)
    parts = torch.stack([scores.per_function[name].float() for name in names])  # [K, B]
    weights = torch.tensor([scores.weights.get(name, 1.0) for name in names], device=parts.device)
    applicable = torch.stack([scores.applicable[name].bool() for name in names])  # [K, B]
    return parts, weights, applicable


def experience_token_rewards(experience: Experience) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The experience's token rewards [B, T] and where its steps end [B, T]: the batch's own
    (rollouts from elsewhere), an agent's turn rewards placed on its turns (algo/turns.py), or None."""
    turn_rewards = experience.scores.turn_rewards if experience.scores is not None else None
    if experience.token_rewards is not None or turn_rewards is None:
        return experience.token_rewards, experience.token_reward_mask
    return turn_token_rewards(turn_rewards, experience.rewards, experience.tokens.completion_mask)


def prepare_update(
    experience: Experience, alg: Any, score: Score, kl_estimator: KLEstimator
) -> tuple[UpdateBatch, dict[str, Tensor]]:
    """The update batch, and the means to log: the KL's when KL is in the reward, the rollout
    correction's when there is one ({} otherwise).

    ``alg`` has GRPOConfig's fields (config/schema.py). Log-probs the experience carries (rollouts
    from elsewhere) are used as given; the others are computed with ``score`` only when needed.
    With ``rollout_correction`` and the sampler's log-probs, the old log-probs are the trainer's own
    (the PPO ratio compares like with like) and the correction weighs each token's advantage by how
    the two differ (algo/correction.py).
    """
    tokens = experience.tokens
    sampler = experience.sampling_logprobs
    correcting = alg.rollout_correction is not None and sampler is not None
    old = score(tokens, False) if correcting else sampler
    if old is None and needs_old_logprobs(alg, tokens.prompt_ids.size(0)):
        old = score(tokens, False)
    ref = experience.ref_logprobs if alg.beta > 0 else None  # beta = 0: no KL, given or not
    if ref is None and alg.beta > 0:
        ref = score(tokens, True)
    mask = tokens.completion_mask.float()  # [B, T]
    rewards, logged = experience.rewards, {}
    given_token_rewards, step_mask = experience_token_rewards(experience)
    token_rewards = estimator_token_rewards(
        alg.adv_estimator,
        rewards,
        given_token_rewards,
        mask,
        kl_in_reward=alg.kl_in_reward,
        token_advantage=alg.token_advantage,
    )  # [B, T] or None
    if alg.kl_in_reward:
        # where, not a product: padding may carry -inf log-probs (external batches), and -inf * 0 is NaN
        kl = torch.where(mask > 0, kl_estimator(old, ref), 0.0)  # [B, T]
        rewards, token_rewards = kl_penalized_rewards(rewards, token_rewards, kl, mask, alg.beta)
        mean_kl = kl.sum() / mask.sum().clamp(min=1)
        logged = {"actor/grpo_kl": mean_kl, "actor/kl_penalty": alg.beta * mean_kl}
        ref = None  # in the reward, not in the loss
    advantages = batch_advantages(
        rewards,
        token_rewards,
        mask,
        estimator=alg.adv_estimator,
        group_ids=experience.group_ids,
        group_size=experience.group_size,
        eps=alg.adv_eps,
        scale_rewards=resolve_scale_rewards(alg.scale_rewards, alg.normalize_by_std),
        gamma=alg.gamma,
        token_advantage=alg.token_advantage,
        step_mask=step_mask,
        reward_parts=reward_parts(experience) if alg.adv_estimator in PER_REWARD else None,
    )  # [B] or [B, T]
    if correcting:
        advantages, correction_means = correct_advantages(alg.rollout_correction, old, sampler, advantages, mask, alg)
        logged |= correction_means
    if alg.mask_truncated_completions and experience.truncated is not None:
        tokens = replace(tokens, completion_mask=tokens.completion_mask * ~experience.truncated.unsqueeze(1))
    update = UpdateBatch(**vars(tokens), advantages=advantages, old_logprobs=old, ref_logprobs=ref)
    return update, logged


def mini_batches(
    num_rows: int, mini: int, micro: int, num_iterations: int, device: torch.device
) -> Iterator[tuple[Tensor, tuple[Tensor, ...]]]:
    """The update's schedule: for each of ``num_iterations`` passes over the batch, its mini-batches
    (one optimizer step each) in a fresh random order, or in order when there is one, each with its
    micro-batches (one backward each). Rows are indices into the batch.

    >>> [(m.tolist(), [p.tolist() for p in parts]) for m, parts in mini_batches(4, 4, 2, 1, torch.device("cpu"))]
    [([0, 1, 2, 3], [[0, 1], [2, 3]])]
    """
    if num_rows % mini or mini % micro:
        raise ValueError(
            f"this batch has {num_rows} completions, which algorithm.mini_batch_size={mini} "
            f"and algorithm.micro_batch_size={micro} must divide in turn"
        )
    for _ in range(num_iterations):
        rows = torch.arange(num_rows, device=device)
        order = rows[torch.randperm(num_rows, device=device)] if mini < num_rows else rows  # [B]
        for mini_rows in order.split(mini):
            yield mini_rows, mini_rows.split(micro)
