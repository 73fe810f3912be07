"""A continuous contextual bandit: the smallest task for a Gaussian policy (policy/gaussian.py).

Each prompt is an observation x, drawn uniformly from [-1, 1]^d; the policy answers with an
action a in R^k; the reward is -||a - a*(x)||^2, where the best action a*(x) = tanh(M x) for a
fixed matrix M (the same for every seed of the rows). A random policy scores about -(1 + k) on
average (its actions are N(0, 1) noise around an untrained mean); one that has learned a*(x)
and narrowed its sigma scores close to 0. Every group of G actions has G different rewards, so
every group carries a learning signal.

``grpo-train experiment=gaussian_bandit`` trains it in a few seconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

TARGET_SEED = 7
"""Seed of the matrix M: the task is the same whatever the run's seed."""


def target_matrix(observation_dim: int, action_dim: int) -> torch.Tensor:
    """M [action_dim, observation_dim], entries N(0, 1) from TARGET_SEED."""
    return torch.randn(action_dim, observation_dim, generator=torch.Generator().manual_seed(TARGET_SEED))


def best_actions(observations: torch.Tensor, action_dim: int) -> torch.Tensor:
    """a*(x) = tanh(M x).  [N, d] -> [N, k]"""
    return torch.tanh(observations @ target_matrix(observations.size(1), action_dim).T)


def load_observations(
    num_train: int = 512, num_val: int = 128, observation_dim: int = 2, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``data.builder``: rows {"prompt": x} with x uniform in [-1, 1]^observation_dim."""
    if min(num_train, num_val, observation_dim) < 1:
        raise ValueError(
            f"num_train, num_val and observation_dim must be >= 1 (got {num_train}, {num_val}, {observation_dim})"
        )
    generator = torch.Generator().manual_seed(seed)
    observations = torch.rand(num_train + num_val, observation_dim, generator=generator) * 2 - 1
    rows = [{"prompt": x} for x in observations.tolist()]
    return rows[:num_train], rows[num_train:]


def negative_squared_distance(
    prompts: list[list[float]], completions: list[list[float]], **columns: Any
) -> list[float]:
    """Reward: -||a - a*(x)||^2 for each (observation, action) pair."""
    observations = torch.tensor(prompts, dtype=torch.float32)
    actions = torch.tensor(completions, dtype=torch.float32)
    return (-(actions - best_actions(observations, actions.size(1))).square().sum(dim=1)).tolist()
