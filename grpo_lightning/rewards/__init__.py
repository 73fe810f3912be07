"""Rewards: the reward-function contract and the weighted composition of several functions.

A reward function is any callable ``fn(prompts, completions, **columns) -> list[float | None]``
(the TRL contract, so TRL reward functions work unchanged): ``prompts`` and ``completions`` are
lists of strings of equal length, and every other dataset column arrives as a keyword list
aligned with them. ``None`` means "not applicable": that value is left out of the function's
logged mean and counts as 0 in the weighted total.
"""

from grpo_lightning.rewards.composite import (
    RewardError,
    RewardFunction,
    RewardScores,
    WeightedReward,
)

__all__ = ["RewardError", "RewardFunction", "RewardScores", "WeightedReward"]
