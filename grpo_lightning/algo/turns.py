"""Agents' turn rewards as token-level rewards: each assistant turn a step of process supervision.

An agent episode's completion is its assistant turns with the tool results between them; the
loss mask is 1 on the sampled tokens, so the k-th run of 1s is the k-th turn. A turn's reward sits
on its last sampled token and marks the end of a step there, so the group estimators credit each
turn with the rewards from it onward ([GRPO] section 4.1.3, ``algorithm.token_advantage``) rather
than with the whole episode's, which would charge a turn for the turns before it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def turn_ends(mask: Tensor) -> Tensor:
    """Where each run of sampled tokens (an assistant turn) ends.  [B, T] -> [B, T] bool

    >>> turn_ends(torch.tensor([[1, 1, 0, 0, 1, 0], [1, 0, 1, 1, 1, 1]])).int().tolist()
    [[0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 1]]
    """
    sampled = mask > 0
    following = torch.zeros_like(sampled)
    following[:, :-1] = sampled[:, 1:]
    return sampled & ~following


def turn_token_rewards(
    turn_rewards: Sequence[Optional[Sequence[float]]], totals: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Token rewards [B, T] and the step mask [B, T] of a batch of episodes.

    Args:
        turn_rewards: [B] each episode's reward per assistant turn, or None for an episode scored
            as a whole (its total then sits on its last turn).
        totals: [B] each episode's reward (used where ``turn_rewards`` has None).
        mask: [B, T] 1 on the sampled tokens.
    Returns:
        token_rewards [B, T] (0 off the turns' last tokens) and steps [B, T] bool (every turn's last
        token, a step even where its reward is 0).

    >>> rewards, steps = turn_token_rewards([[-0.5, 1.0], None], torch.tensor([0.5, 2.0]),
    ...                                     torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0]]))
    >>> rewards.tolist(), steps.int().tolist()
    ([[0.0, -0.5, 0.0, 1.0], [0.0, 0.0, 2.0, 0.0]], [[0, 1, 0, 1], [0, 0, 1, 0]])
    """
    ends = turn_ends(mask)  # [B, T]
    counts = ends.sum(dim=1)  # [B] turns sampled
    last = ends & (ends.long().cumsum(dim=1) == counts.unsqueeze(1))  # [B, T] the last turn's end
    whole = torch.tensor([turns is None for turns in turn_rewards], device=mask.device)  # [B]
    steps = torch.where(whole.unsqueeze(1), last, ends)  # [B, T]
    given = torch.tensor([1 if turns is None else len(turns) for turns in turn_rewards], device=mask.device)  # [B]
    placed = steps.sum(dim=1)  # [B]
    wrong = (given != placed) & (counts > 0)  # an episode with nothing sampled has no token to carry a reward
    if wrong.any():
        row = int(wrong.nonzero()[0])
        raise ValueError(
            f"episode {row} has {int(given[row])} turn rewards but {int(counts[row])} runs of sampled tokens; the "
            "turn rewards must come from the rollout whose mask this is"
        )
    values = [
        value
        for turns, total, count in zip(turn_rewards, totals.tolist(), counts.tolist())
        if count > 0
        for value in ([total] if turns is None else turns)
    ]  # row by row, as boolean indexing walks steps
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [B, T]
    token_rewards[steps] = torch.tensor(values, dtype=torch.float32, device=mask.device)
    return token_rewards, steps
