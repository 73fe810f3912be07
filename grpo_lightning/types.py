"""The data that flows between the layers: token batches, rollouts, reward scores, experience.

A leaf module: it imports nothing of grpo_lightning, so every layer can use it and no two
layers import each other for their common types. Shapes: B rows (completions, G consecutive
rows per prompt), P prompt tokens, T completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from torch import Tensor


@dataclass
class TokenBatch:
    """The tensors one forward pass needs; every field has the batch as its first dimension."""

    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P]
    completion_ids: Tensor  # [B, T] right-padded
    completion_mask: Tensor  # [B, T] 1 on completion tokens up to and including EOS

    def rows(self, index: Tensor) -> "TokenBatch":
        """The rows ``index`` of every tensor field."""
        return replace(
            self,
            **{f.name: getattr(self, f.name)[index] for f in fields(self) if isinstance(getattr(self, f.name), Tensor)},
        )


@dataclass
class UpdateBatch(TokenBatch):
    """A scored rollout, ready for the policy update."""

    advantages: Optional[Tensor] = None  # [B] or [B, T]
    old_logprobs: Optional[Tensor] = None  # [B, T]; None: the current log-probs, detached
    ref_logprobs: Optional[Tensor] = None  # [B, T]; None: no KL term


@dataclass
class Rollout:
    """Sampled completions with the text and columns the reward functions see."""

    tokens: TokenBatch
    prompts: list[str]  # [B] the prompt of each row (repeated G times)
    completions: list[str]  # [B]
    columns: dict[str, list[Any]]  # each [B], the dataset's other columns, repeated like prompts
    group_ids: Tensor  # [B] index of the prompt within the batch
    truncated: Tensor  # [B] bool: hit max_new_tokens before EOS
    sampling_logprobs: Optional[Tensor] = None  # [B, T] the sampler's own, where it kept them

    @property
    def lengths(self) -> Tensor:
        return self.tokens.completion_mask.sum(dim=1)  # [B]


@dataclass
class RewardScores:
    """Rewards of one batch of completions."""

    total: Tensor  # [B] weighted sum, None counted as 0
    per_function: dict[str, Tensor]  # name -> [B] raw values (0 where not applicable)
    applicable: dict[str, Tensor]  # name -> [B] bool, False where the function returned None
    non_finite: dict[str, int] = field(default_factory=dict)  # name -> NaN/inf values scored 0
    unshaped: Optional[Tensor] = None  # [B] total before reward shaping (overlong penalty); None: unshaped
    weights: dict[str, float] = field(default_factory=dict)  # name -> weight in the total


@dataclass
class Experience:
    tokens: TokenBatch
    rewards: Tensor  # [B] outcome reward of each completion
    group_ids: Tensor  # [B] prompt index, consecutive groups
    group_size: int
    token_rewards: Optional[Tensor] = None  # [B, T] process rewards, or None
    token_reward_mask: Optional[Tensor] = None  # [B, T] bool where steps end, or None: algo.advantages' default
    truncated: Optional[Tensor] = None  # [B] bool, or None when unknown
    scores: Optional[RewardScores] = None  # per-function rewards (generated rollouts only)
    sampling_logprobs: Optional[Tensor] = None  # [B, T], or None: recompute when needed
    ref_logprobs: Optional[Tensor] = None  # [B, T], or None: compute when beta > 0
    prompts: Optional[list[str]] = None  # [B] texts (generated rollouts only)
    completions: Optional[list[str]] = None  # [B]

    @property
    def lengths(self) -> Tensor:
        return self.tokens.completion_mask.sum(dim=1)  # [B]


def experience_from_rollout(rollout: Rollout, scores: RewardScores, group_size: int) -> Experience:
    return Experience(
        tokens=rollout.tokens,
        rewards=scores.total,
        group_ids=rollout.group_ids,
        group_size=group_size,
        truncated=rollout.truncated,
        scores=scores,
        sampling_logprobs=rollout.sampling_logprobs,
        prompts=rollout.prompts,
        completions=rollout.completions,
    )


def per_completion_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] as given, or [B, T] per-token advantages as each completion's mean over its tokens."""
    if advantages.dim() == 1:
        return advantages
    mask = mask.to(advantages.dtype)
    return (advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@dataclass
class RolloutSample:
    """One training step's completions, as the reward functions and the estimator saw them."""

    prompts: list[str]  # [B] one per completion (each prompt repeated G times)
    completions: list[str]  # [B]
    rewards: dict[str, Tensor]  # name -> [B] raw values
    applicable: dict[str, Tensor]  # name -> [B] bool, False where the function returned None
    total: Tensor  # [B] weighted sum
    advantages: Tensor  # [B]; a completion's token mean where advantages are per token
    lengths: Tensor  # [B] completion tokens

    @classmethod
    def from_experience(cls, experience: Experience, advantages: Tensor) -> RolloutSample:
        """The sample of generated, scored ``experience`` (its ``scores`` are set)."""
        scores = experience.scores
        return cls(
            experience.prompts,
            experience.completions,
            scores.per_function,
            scores.applicable,
            experience.rewards,
            per_completion_advantages(advantages, experience.tokens.completion_mask),
            experience.lengths,
        )

    def columns(self) -> list[str]:
        return ["prompt", "completion", *(f"reward/{name}" for name in self.rewards), "reward", "advantage", "length"]

    def rows(self) -> list[list[Any]]:
        """Table rows; a reward that did not apply to a completion is None, not 0."""
        per_function = [
            [value if ok else None for value, ok in zip(values.tolist(), self.applicable[name].tolist())]
            for name, values in self.rewards.items()
        ]
        columns = [
            self.prompts,
            self.completions,
            *per_function,
            self.total.tolist(),
            self.advantages.tolist(),
            self.lengths.tolist(),
        ]
        return [list(row) for row in zip(*columns)]
