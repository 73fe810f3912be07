"""Agents' turn rewards: placed on each turn's last sampled token, credited from that turn on."""

import pytest
import torch

from grpo_lightning.algo.advantages import batch_advantages
from grpo_lightning.algo.turns import turn_ends, turn_token_rewards
from grpo_lightning.algo.update_batch import experience_token_rewards
from grpo_lightning.types import Experience, RewardScores, TokenBatch

# Two episodes of one group: turns of 2 and 1 sampled tokens with 2 inserted between (row 0),
# one turn of 3 tokens (row 1).
MASK = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0]])  # [2, 6]


def test_turn_ends_are_the_last_token_of_each_run_of_sampled_tokens():
    assert turn_ends(MASK).int().tolist() == [[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    assert not turn_ends(torch.zeros(1, 3)).any()


def test_turn_rewards_sit_on_turn_ends_and_whole_episode_rewards_on_the_last():
    rewards, steps = turn_token_rewards([[-0.25, 1.0], None], torch.tensor([0.75, 0.5]), MASK)
    assert rewards.tolist() == [[0, -0.25, 0, 0, 1.0, 0], [0, 0, 0.5, 0, 0, 0]]
    assert steps.int().tolist() == [[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    _, zero_turn = turn_token_rewards([[0.0, 1.0], None], torch.tensor([1.0, 0.0]), MASK)
    assert zero_turn[0].int().tolist() == [0, 1, 0, 0, 1, 0]  # a turn rewarded 0 is still a step
    with pytest.raises(ValueError, match="episode 0 has 3 turn rewards but 2 runs"):
        turn_token_rewards([[0.0, 0.0, 1.0], None], torch.tensor([1.0, 0.0]), MASK)


def advantages_of_turns(estimator: str, **options) -> torch.Tensor:
    """Advantages of MASK's two episodes, turns rewarded [-0.25, 1] and [0.5]."""
    token_rewards, steps = turn_token_rewards([[-0.25, 1.0], [0.5]], torch.tensor([0.75, 0.5]), MASK)
    return batch_advantages(
        torch.tensor([0.75, 0.5]),
        token_rewards,
        MASK.float(),
        estimator=estimator,
        group_ids=torch.tensor([0, 0]),
        group_size=2,
        eps=1e-6,
        gamma=1.0,
        step_mask=steps,
        **options,
    )


def test_each_turn_is_credited_with_the_rewards_from_it_on():
    # Row 0: turns rewarded -0.25 then 1; row 1: one turn rewarded 0.5. Steps {-0.25, 1, 0.5}, mean 0.4167:
    # centred -0.6667, 0.5833 and 0.0833. Row 0's first turn gets -0.6667 + 0.5833 = -0.0833, its
    # second 0.5833 (the first turn's reward is not charged to it); row 1's one turn 0.0833.
    advantages = advantages_of_turns("grpo", scale_rewards="none")  # [2, 6]
    sampled = MASK.bool()
    expected = torch.tensor([[-1 / 12, -1 / 12, 0, 0, 7 / 12, 0], [1 / 12, 1 / 12, 1 / 12, 0, 0, 0]])
    torch.testing.assert_close(advantages[sampled], expected[sampled])


def scored_experience(turn_rewards, totals) -> Experience:
    ids = torch.ones_like(MASK)
    tokens = TokenBatch(ids[:, :1], ids[:, :1], ids, MASK, completion_attention_mask=torch.ones_like(MASK))
    scores = RewardScores(torch.tensor(totals), {}, {}, turn_rewards=turn_rewards)
    return Experience(tokens, torch.tensor(totals), torch.tensor([0, 0]), 2, scores=scores)


def test_an_experience_with_turn_rewards_carries_them_as_token_rewards():
    token_rewards, steps = experience_token_rewards(scored_experience([[-0.25, 1.0], [0.5]], [0.75, 0.5]))
    assert token_rewards[0, 1].item() == -0.25 and token_rewards[0, 4].item() == 1.0 and steps.sum().item() == 3
    assert experience_token_rewards(scored_experience(None, [0.75, 0.5])) == (None, None)


def test_a_reward_shaping_penalty_lands_on_the_last_turn():
    scores = RewardScores(torch.tensor([0.75, 0.5]), {}, {}, turn_rewards=[[-0.25, 1.0], None])
    shaped = scores.with_penalty(torch.tensor([-0.5, -0.25]))
    assert shaped.turn_rewards == [[-0.25, 0.5], None]
    assert shaped.total.tolist() == [0.25, 0.25] and shaped.unshaped.tolist() == [0.75, 0.5]


def test_per_reward_estimators_refuse_token_rewards():
    parts = (torch.tensor([[0.75, 0.5]]), torch.tensor([1.0]), torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="adv_estimator=gdpo .* would drop"):
        advantages_of_turns("gdpo", scale_rewards="group", reward_parts=parts)
