"""Rewards: the reward-function contract and the weighted composition of several functions.

A reward function is any callable ``fn(prompts, completions, **columns) -> list[float | None]``
(the TRL contract, so TRL reward functions work unchanged): ``prompts`` and ``completions`` are
lists of strings of equal length, and every other dataset column arrives as a keyword list
aligned with them. ``None`` means "not applicable": that value is left out of the function's
logged mean and counts as 0 in the weighted total.

Built in: :func:`~grpo_lightning.rewards.math.math_answer` (final answer vs. reference),
:func:`~grpo_lightning.rewards.format.format_reward` (a regex layout),
:func:`~grpo_lightning.rewards.length.length_penalty` (DAPO's soft overlong penalty) and
:class:`~grpo_lightning.rewards.reward_model.RewardModel` (a learned sequence classifier).
"""

from grpo_lightning.rewards.composite import (
    RewardError,
    RewardFunction,
    RewardScores,
    WeightedReward,
)
from grpo_lightning.rewards.format import format_reward
from grpo_lightning.rewards.length import length_penalty
from grpo_lightning.rewards.math import math_answer

__all__ = [
    "RewardError",
    "RewardFunction",
    "RewardScores",
    "WeightedReward",
    "format_reward",
    "length_penalty",
    "math_answer",
]
