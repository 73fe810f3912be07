"""DAPO dynamic sampling: keep only groups that carry a learning signal.

A group whose G rewards are all equal gets advantage 0 everywhere, so it only dilutes the
batch. With ``algorithm.filter_zero_std_groups`` such groups are dropped and more prompts are
generated, round after round, until ``data.batch_size`` groups remain or
``algorithm.max_generation_rounds`` rounds have run (Yu et al. 2025, arXiv:2503.14476,
section 3.2). A batch still short after the last round is filled with dropped groups, so the
update keeps its configured size (mini-batch divisibility); their advantages are 0, so they
contribute only the KL and entropy terms.

Which reward decides is ``algorithm.filter_groups_by`` (:func:`judged_rewards`): the shaped total
the advantages see (default), the total before the overlong penalty, or one reward function.
The paper keeps the groups with 0 < #correct < G, judged by accuracy before its length shaping:
its criterion is a correctness function's name here, or ``reward`` when that function is the
only one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from grpo_lightning.algo.advantages import constant_groups
from grpo_lightning.distributed import AllAgree
from grpo_lightning.types import RewardScores, Rollout, TokenBatch

FILTER_GROUPS_TOTALS = ("shaped_reward", "reward")
"""``algorithm.filter_groups_by`` values that name a total rather than one reward function."""


def judged_rewards(scores: RewardScores, filter_groups_by: str) -> Tensor:
    """The rewards [B] whose equality within a group drops it (``algorithm.filter_groups_by``).

    >>> s = RewardScores(torch.tensor([0.9, 1.0]), {"correct": torch.tensor([1.0, 1.0])}, {}, unshaped=torch.ones(2))
    >>> [judged_rewards(s, by).tolist() for by in ("shaped_reward", "reward", "correct")]
    [[0.8999999761581421, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    if filter_groups_by == "shaped_reward":
        return scores.total
    if filter_groups_by == "reward":
        return scores.total if scores.unshaped is None else scores.unshaped
    return scores.per_function[filter_groups_by]


def _pad_tokens(parts: list[TokenBatch]) -> TokenBatch:
    """Concatenate rows: prompts padded on the left, completions on the right (mask 0)."""
    prompt_len = max(part.prompt_ids.size(1) for part in parts)
    completion_len = max(part.completion_ids.size(1) for part in parts)

    def left(x: Tensor) -> Tensor:
        return F.pad(x, (prompt_len - x.size(1), 0))

    def right(x: Tensor) -> Tensor:
        return F.pad(x, (0, completion_len - x.size(1)))

    multi_turn = any(p.completion_attention_mask is not None for p in parts)
    return TokenBatch(
        torch.cat([left(p.prompt_ids) for p in parts]),
        torch.cat([left(p.prompt_mask) for p in parts]),
        torch.cat([right(p.completion_ids) for p in parts]),
        torch.cat([right(p.completion_mask) for p in parts]),
        completion_attention_mask=torch.cat([right(p.completion_present) for p in parts]) if multi_turn else None,
    )


def _select_groups(
    rollout: Rollout, scores: RewardScores, groups: Tensor, group_size: int
) -> tuple[Rollout, RewardScores]:
    """The rows of the given group indices [K], in that order."""
    rows = (groups.unsqueeze(1) * group_size + torch.arange(group_size, device=groups.device)).view(-1)
    index = rows.tolist()
    picked = Rollout(
        tokens=rollout.tokens.rows(rows),
        prompts=[rollout.prompts[i] for i in index],
        completions=[rollout.completions[i] for i in index],
        columns={k: [v[i] for i in index] for k, v in rollout.columns.items()},
        group_ids=rollout.group_ids[rows],
        truncated=rollout.truncated[rows],
        sampling_logprobs=None if rollout.sampling_logprobs is None else rollout.sampling_logprobs[rows],
        episodes=None if rollout.episodes is None else [rollout.episodes[i] for i in index],
    )
    picked_scores = RewardScores(
        scores.total[rows],
        {k: v[rows] for k, v in scores.per_function.items()},
        {k: v[rows] for k, v in scores.applicable.items()},
        unshaped=None if scores.unshaped is None else scores.unshaped[rows],
        weights=scores.weights,
        extra_columns={k: [v[i] for i in index] for k, v in scores.extra_columns.items()},
        turn_rewards=None if scores.turn_rewards is None else [scores.turn_rewards[i] for i in index],
    )
    return picked, picked_scores


def concat(parts: list[tuple[Rollout, RewardScores]], group_size: int) -> tuple[Rollout, RewardScores]:
    """Join scored rollouts; group ids are renumbered 0..K-1 in order."""
    rollouts = [r for r, _ in parts]
    scores = [s for _, s in parts]
    tokens = _pad_tokens([r.tokens for r in rollouts])
    rows = tokens.prompt_ids.size(0)
    rollout = Rollout(
        tokens=tokens,
        prompts=sum((r.prompts for r in rollouts), []),
        completions=sum((r.completions for r in rollouts), []),
        columns={k: sum((r.columns[k] for r in rollouts), []) for k in rollouts[0].columns},
        group_ids=torch.arange(rows // group_size, device=tokens.prompt_ids.device).repeat_interleave(group_size),
        truncated=torch.cat([r.truncated for r in rollouts]),
        sampling_logprobs=None
        if rollouts[0].sampling_logprobs is None
        else torch.cat(
            [
                F.pad(r.sampling_logprobs, (0, tokens.completion_ids.size(1) - r.sampling_logprobs.size(1)))
                for r in rollouts
            ]
        ),
        episodes=None if rollouts[0].episodes is None else sum((r.episodes for r in rollouts), []),
    )
    total = RewardScores(
        torch.cat([s.total for s in scores]),
        {k: torch.cat([s.per_function[k] for s in scores]) for k in scores[0].per_function},
        {k: torch.cat([s.applicable[k] for s in scores]) for k in scores[0].applicable},
        unshaped=None if scores[0].unshaped is None else torch.cat([s.unshaped for s in scores]),
        weights=scores[0].weights,
        # A column a function logged in some rounds only is None in the others' rows.
        extra_columns={
            k: sum((s.extra_columns.get(k, [None] * s.total.numel()) for s in scores), [])
            for k in dict.fromkeys(k for s in scores for k in s.extra_columns)
        },
        # A round whose functions all returned episode rewards has outcome rows (None) only.
        turn_rewards=None
        if all(s.turn_rewards is None for s in scores)
        else sum((s.turn_rewards or [None] * s.total.numel() for s in scores), []),
    )
    return rollout, total


def dynamic_sample(
    draw: Callable[[int], tuple[Rollout, RewardScores]],
    num_groups: int,
    group_size: int,
    max_rounds: int,
    lockstep: Optional[AllAgree] = None,
    filter_groups_by: str = "shaped_reward",
) -> tuple[Rollout, RewardScores, int, float]:
    """Draw rounds (``draw(round_index)`` -> one scored rollout) until ``num_groups`` groups whose
    judged rewards (:func:`judged_rewards`) are not all equal are kept or ``max_rounds`` ran.

    With ``lockstep`` (sharded weights) a process that has enough groups draws on until every
    process has, so all make the same generation calls; the extra groups are left out.
    Returns (rollout, scores, rounds used, fraction of generated groups that were kept). The
    result has exactly ``num_groups`` groups when enough were generated in total.
    """

    def enough(kept_groups: int) -> bool:
        return lockstep(kept_groups >= num_groups) if lockstep is not None else kept_groups >= num_groups

    kept, dropped = [], []
    kept_groups = generated_groups = 0
    rounds = 0
    non_finite: Counter[str] = Counter()  # rewards scored 0 for being NaN/inf, over every round
    while rounds == 0 or (rounds < max_rounds and not enough(kept_groups)):
        rollout, scores = draw(rounds)
        rounds += 1
        non_finite.update(scores.non_finite)
        constant = constant_groups(judged_rewards(scores, filter_groups_by), group_size)  # [N]
        generated_groups += constant.numel()
        keep = (~constant).nonzero().view(-1)
        kept.append(_select_groups(rollout, scores, keep, group_size))
        dropped.append(_select_groups(rollout, scores, constant.nonzero().view(-1), group_size))
        kept_groups += keep.numel()
    rollout, scores = concat(kept + dropped, group_size)
    available = scores.total.numel() // group_size
    if available > num_groups:
        rollout, scores = _select_groups(
            rollout, scores, torch.arange(num_groups, device=scores.total.device), group_size
        )
        rollout.group_ids = torch.arange(num_groups, device=scores.total.device).repeat_interleave(group_size)
    scores = replace(scores, non_finite={name: non_finite[name] for name in scores.per_function if name in non_finite})
    return rollout, scores, rounds, kept_groups / max(generated_groups, 1)
