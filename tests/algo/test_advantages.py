"""Group-relative advantages on hand-computed values.

dr_grpo, rloo, reinforce_pp, scale_rewards and both token-level forms (process supervision,
normalized returns) on hand-computed tensors."""

import math

import pytest
import torch

from grpo_lightning.algo.advantages import (
    ADV_ESTIMATORS,
    batch_advantages,
    compute_advantages,
    default_step_mask,
    discounted_returns,
    estimator_token_rewards,
    get_adv_estimator,
    normalize_group_rewards,
    outcome_at_last_token,
    process_supervision_advantages,
    register_adv_estimator,
    scale_by_batch_std,
    token_level_advantages,
)


def test_population_std_normalization_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, population std 0.5 -> advantages +-1
    # group [3, 1]:       mean 2,   population std 1   -> advantages +-1
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = normalize_group_rewards(rewards, group_size=4, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    adv = normalize_group_rewards(torch.tensor([3.0, 1.0]), group_size=2, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]))


def test_unequal_rewards_three_per_group():
    # [0, 1, 2]: mean 1, population std sqrt(2/3)
    adv = normalize_group_rewards(torch.tensor([0.0, 1.0, 2.0]), group_size=3, eps=0.0)
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(adv, torch.tensor([-1 / s, 0.0, 1 / s]))


def test_eps_is_added_to_std():
    adv = normalize_group_rewards(torch.tensor([1.0, 0.0]), group_size=2, eps=0.5)
    torch.testing.assert_close(adv, torch.tensor([0.5 / 1.0, -0.5 / 1.0]))


def test_without_std_division_only_centres():
    adv = normalize_group_rewards(torch.tensor([3.0, 1.0, 0.0, 4.0]), group_size=2, normalize_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -2.0, 2.0]))


@pytest.mark.parametrize("value", [0.1, 1.0, -3.7, 1e6])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_zero_variance_group_is_exactly_zero(value, eps):
    rewards = torch.full((3,), value)
    adv = normalize_group_rewards(rewards, group_size=3, eps=eps)
    assert torch.equal(adv, torch.zeros(3))
    assert not adv.isnan().any()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="multiple of group_size"):
        normalize_group_rewards(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        normalize_group_rewards(torch.zeros(4), group_size=1)


def _both(rewards, group_ids, group_size, **kw):
    kw = {"eps": 1e-8, "normalize_by_std": True} | kw
    a = get_adv_estimator("grpo")(rewards, group_ids=group_ids, group_size=group_size, **kw)
    b = get_adv_estimator("grpo_vectorized")(rewards, group_ids=group_ids, group_size=group_size, **kw)
    return a, b


@pytest.mark.parametrize("normalize_by_std", [True, False])
def test_index_and_vectorized_estimators_agree_on_consecutive_layout(normalize_by_std):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (64,), generator=gen).float()
    group_ids = torch.arange(16).repeat_interleave(4)
    a, b = _both(rewards, group_ids, 4, normalize_by_std=normalize_by_std)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_index_estimator_handles_any_order_and_unequal_sizes():
    # group 7: rewards [1, 0] -> +-1 ; group 3: [2, 2, 2] -> 0 ; interleaved
    rewards = torch.tensor([1.0, 2.0, 0.0, 2.0, 2.0])
    group_ids = torch.tensor([7, 3, 7, 3, 3])
    adv = get_adv_estimator("grpo")(rewards, group_ids=group_ids, group_size=2, eps=0.0, normalize_by_std=True)
    assert torch.equal(adv, torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0]))


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(KeyError, match="grpo_vectorized"):
        get_adv_estimator("nope")


def test_register_custom_estimator():
    @register_adv_estimator("test_sign_only")
    def sign_only(rewards, *, group_ids, group_size, eps, normalize_by_std):
        return torch.sign(normalize_group_rewards(rewards, group_size))

    try:
        adv = get_adv_estimator("test_sign_only")(
            torch.tensor([3.0, 1.0]), group_ids=torch.zeros(2), group_size=2, eps=1e-8, normalize_by_std=True
        )
        assert torch.equal(adv, torch.tensor([1.0, -1.0]))
        with pytest.raises(ValueError, match="already registered"):
            register_adv_estimator("test_sign_only")(sign_only)
    finally:
        ADV_ESTIMATORS.pop("test_sign_only")


IDS = torch.tensor([0, 0, 0, 1, 1, 1])
R = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 0.0])  # group means 1 and 2


def _run(name, rewards=R, ids=IDS, group_size=3, scale="group", eps=0.0):
    return compute_advantages(name, rewards, group_ids=ids, group_size=group_size, eps=eps, scale_rewards=scale)


def test_dr_grpo_only_centres():
    torch.testing.assert_close(_run("dr_grpo"), torch.tensor([0.0, -1.0, 1.0, 1.0, 1.0, -2.0]))


def test_rloo_baseline_is_mean_of_the_others():
    # r_0 = 1, others {0, 2}: mean 1 -> 0 ; r_1 = 0, others {1, 2} -> -1.5 ; r_2 = 2, others {1, 0} -> 1.5
    # r_3 = 3, others {3, 0} -> 1.5 ; r_5 = 0, others {3, 3} -> -3
    expected = torch.tensor([0.0, -1.5, 1.5, 1.5, 1.5, -3.0])
    torch.testing.assert_close(_run("rloo"), expected)
    # = G / (G - 1) * (r - mean)
    torch.testing.assert_close(expected, 1.5 * _run("dr_grpo"))


def test_rloo_any_order_and_singleton_group():
    adv = get_adv_estimator("rloo")(
        torch.tensor([4.0, 1.0, 2.0]), group_ids=torch.tensor([5, 9, 5]), group_size=2, eps=0.0, normalize_by_std=False
    )
    torch.testing.assert_close(adv, torch.tensor([2.0, 0.0, -2.0]))


def _reinforce_pp(rewards, mask, token_rewards=None, gamma=1.0, eps=0.0):
    return batch_advantages(
        rewards,
        token_rewards,
        mask,
        estimator="reinforce_pp",
        group_ids=torch.arange(rewards.numel()) // 2,
        group_size=2,
        eps=eps,
        scale_rewards="none",
        gamma=gamma,
    )


def test_reinforce_pp_whitens_over_the_batchs_tokens():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]]).float()
    # every token's return is its completion's reward: 1, 1 | 0 | 0 | 3, 3, 3 (7 tokens), so the
    # mean is 11/7 and the population variance 29/7 - (11/7)^2 = 82/49
    adv = _reinforce_pp(rewards, mask)
    expected = (7 * torch.tensor([[1.0, 1.0, 0.0], [0.0, 0, 0], [0.0, 0, 0], [3.0, 3.0, 3.0]]) - 11) / math.sqrt(82)
    torch.testing.assert_close(adv, expected * mask)
    assert adv[mask == 0].eq(0).all()


def test_reinforce_pp_subtracts_the_kl_still_to_come():
    # REINFORCE++ eqs. 3-5: r_t = -beta KL_t, plus the outcome reward on the last token; the
    # return at t is r - beta * (KL_t + ... + KL_end), not r - beta * (the whole sequence's KL)
    rewards = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).float()
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    token_rewards = (
        estimator_token_rewards(
            "reinforce_pp", rewards, None, mask, kl_in_reward=True, token_advantage="process_supervision"
        )
        - kl
    )  # beta = 1
    adv = _reinforce_pp(rewards, mask, token_rewards)
    returns = [1 - 0.6, 1 - 0.5, 1 - 0.3, -0.5]
    mean = sum(returns) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / 4)
    expected = torch.tensor([[returns[0], returns[1], returns[2]], [returns[3], mean, mean]]) - mean
    torch.testing.assert_close(adv, expected / std * mask)


def test_reinforce_pp_discounts_the_outcome_from_the_last_token():
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]]).float()
    adv = _reinforce_pp(torch.tensor([1.0, 0.0]), mask, gamma=0.5)
    returns = torch.tensor([[0.25, 0.5, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, (returns - returns.mean()) / returns.std(unbiased=False))


def test_reinforce_pp_of_a_constant_batch_is_exactly_zero():
    # 0.1 is not a float32 number: a float32 mean of n copies need not equal it, and the tiny
    # remainder over a tiny nonzero std would be a large advantage (0.03 for some n, before).
    for n in (4, 6, 100, 504):
        mask = (torch.arange(5) < torch.arange(n).remainder(5).unsqueeze(1) + 1).float()
        adv = _reinforce_pp(torch.full((n,), 0.1), mask, eps=1e-6)
        assert (adv == 0).all(), n


def test_scale_rewards_group_batch_none():
    group = _run("grpo_vectorized", scale="group")
    # group 0: centred (0, -1, 1), std sqrt(2/3); group 1: (1, 1, -2), std sqrt(2)
    torch.testing.assert_close(
        group,
        torch.tensor([0.0, -1.0, 1.0, 1 / math.sqrt(2), 1 / math.sqrt(2), -2 / math.sqrt(2)])
        * torch.tensor([math.sqrt(1.5)] * 3 + [1.0] * 3),
    )
    none = _run("grpo_vectorized", scale="none")
    torch.testing.assert_close(none, torch.tensor([0.0, -1.0, 1.0, 1.0, 1.0, -2.0]))
    batch = _run("grpo", scale="batch")
    batch_std = math.sqrt((0 + 1 + 1 + 1 + 1 + 4) / 6)  # centred values have mean 0
    torch.testing.assert_close(batch, none / batch_std)


def test_batch_scale_keeps_all_zero_batch_zero():
    assert torch.equal(scale_by_batch_std(torch.zeros(4), eps=0.0), torch.zeros(4))


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # G_2 = 2, G_1 = 0 + 0.5 * 2 = 1, G_0 = 1 + 0.5 * 1 = 1.5; padding is 0 and does not leak
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.5), torch.tensor([[1.5, 1.0, 2.0, 0.0]]))


def test_token_level_advantages_normalize_over_the_groups_tokens():
    # one group of two completions; outcome reward on the last token, gamma 1
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = token_level_advantages(
        rewards, mask, group_ids=torch.tensor([0, 0]), gamma=1.0, eps=0.0, scale_rewards="none"
    )
    # returns (1, 1) and (0, pad): mean over 3 valid tokens 2/3
    torch.testing.assert_close(adv, torch.tensor([[1 / 3, 1 / 3], [-2 / 3, 0.0]]))
    scaled = token_level_advantages(
        rewards, mask, group_ids=torch.tensor([0, 0]), gamma=1.0, eps=0.0, scale_rewards="group"
    )
    std = math.sqrt((1 / 9 + 1 / 9 + 4 / 9) / 3)
    torch.testing.assert_close(scaled, adv / std)


def test_token_level_constant_groups_are_exactly_zero_and_nan_padding_stays_out():
    # group 0 (rows 0-3): every valid return is 0.3 (gamma 1, the reward on each row's last
    # token); in float32 their mean is not exactly 0.3, and that noise over a near-zero std was
    # an advantage of 0.03 on every token. Group 1 (rows 4-5) carries signal.
    lengths = torch.tensor([7, 3, 5, 7, 4, 2])
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()
    rewards = torch.zeros(6, 7)
    rewards[torch.arange(6), lengths - 1] = torch.tensor([0.3, 0.3, 0.3, 0.3, 1.0, 0.0])
    rewards[1, 5] = float("nan")  # padding: must not matter
    for scale in ("group", "batch", "none"):
        adv = token_level_advantages(
            rewards, mask, group_ids=torch.tensor([0, 0, 0, 0, 1, 1]), gamma=1.0, eps=1e-6, scale_rewards=scale
        )
        assert torch.isfinite(adv).all(), scale
        assert (adv[:4] == 0).all(), (scale, adv[:4])
        assert (adv[4:] * mask[4:]).abs().sum() > 0
        assert (adv[mask == 0] == 0).all()


def test_outcome_at_last_token_and_the_default_step_mask():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]]).float()
    placed = outcome_at_last_token(torch.tensor([2.0, 0.0, 5.0]), mask)
    torch.testing.assert_close(placed, torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    rewards = torch.tensor([[0.5, 0.0, 9.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # non-zero rewards on valid tokens, and every last token (a final step may score 0); never padding
    assert default_step_mask(rewards, mask).tolist() == [[True, True, False], [False, False, True], [False] * 3]


LENGTHS = torch.tensor([4, 2, 2, 3])
LENGTH_MASK = (torch.arange(4) < LENGTHS.unsqueeze(1)).float()  # [4, 4]


def test_process_supervision_of_an_outcome_reward_is_outcome_grpo_whatever_the_lengths():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    token_rewards = outcome_at_last_token(rewards, LENGTH_MASK)
    ids = torch.zeros(4, dtype=torch.long)
    adv = process_supervision_advantages(
        token_rewards, LENGTH_MASK, step_mask=None, group_ids=ids, gamma=1.0, eps=0.0, scale_rewards="group"
    )
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0]).unsqueeze(1) * LENGTH_MASK)
    # The other form normalizes over tokens, where long completions weigh more: not +-1.
    returns_first = token_level_advantages(token_rewards, LENGTH_MASK, group_ids=ids, gamma=1.0, eps=0.0)
    assert not torch.allclose(returns_first, adv)
    # 11 tokens, 7 of them with return 1: mean 7/11, variance 28/121
    torch.testing.assert_close(returns_first[:, 0], torch.tensor([4.0, -7.0, -7.0, 4.0]) / math.sqrt(28))


def test_process_supervision_normalizes_steps_then_sums_those_that_follow():
    # group of two: row 0 has steps ending at t=1 (reward 1.0) and t=3 (0.2); row 1 one at t=2 (0.5)
    token_rewards = torch.tensor([[0.0, 1.0, 0.0, 0.2], [0.0, 0.0, 0.5, 7.0]])  # 7.0 is padding
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).float()
    steps = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 0]])
    mean = (1.0 + 0.2 + 0.5) / 3
    std = math.sqrt(((1.0 - mean) ** 2 + (0.2 - mean) ** 2 + (0.5 - mean) ** 2) / 3)
    a, b, c = ((x - mean) / std for x in (1.0, 0.2, 0.5))
    ids = torch.tensor([0, 0])
    for step_mask in (steps, None):  # here the default finds the same steps
        adv = process_supervision_advantages(
            token_rewards, mask, step_mask=step_mask, group_ids=ids, gamma=1.0, eps=0.0, scale_rewards="group"
        )
        torch.testing.assert_close(adv, torch.tensor([[a + b, a + b, b, b], [c, c, c, 0.0]]))
    discounted = process_supervision_advantages(
        token_rewards, mask, step_mask=steps, group_ids=ids, gamma=0.5, eps=0.0, scale_rewards="group"
    )
    torch.testing.assert_close(
        discounted, torch.tensor([[0.5 * a + 0.125 * b, a + 0.25 * b, 0.5 * b, b], [0.25 * c, 0.5 * c, c, 0.0]])
    )
    unscaled = process_supervision_advantages(
        token_rewards, mask, step_mask=steps, group_ids=ids, gamma=1.0, eps=0.0, scale_rewards="none"
    )
    torch.testing.assert_close(unscaled, adv * std)


def test_process_supervision_batch_scale_and_constant_groups():
    # group 0 steps: 1, 0 (centred +-0.5); group 1 steps: 0.3, 0.3 (constant: exactly 0)
    token_rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.3], [0.3, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]]).float()
    steps = torch.tensor([[1, 0], [0, 1], [0, 1], [1, 0]])
    ids = torch.tensor([0, 0, 1, 1])
    for scale in ("group", "batch", "none"):
        adv = process_supervision_advantages(
            token_rewards, mask, step_mask=steps, group_ids=ids, gamma=1.0, eps=0.0, scale_rewards=scale
        )
        assert (adv[2:] == 0).all(), scale
    # batch: the std of all four centred steps (0.5, -0.5, 0, 0) is sqrt(1/8)
    batch = process_supervision_advantages(
        token_rewards, mask, step_mask=steps, group_ids=ids, gamma=1.0, eps=0.0, scale_rewards="batch"
    )
    torch.testing.assert_close(batch[:2], torch.tensor([[0.5, 0.0], [-0.5, -0.5]]) * math.sqrt(8))


def test_token_advantage_form_is_chosen_by_name_and_kl_costs_need_normalized_returns():
    token_rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    mask = torch.ones(2, 2)
    common = dict(estimator="grpo", group_ids=torch.tensor([0, 0]), group_size=2, eps=0.0, scale_rewards="none")
    process = batch_advantages(torch.zeros(2), token_rewards, mask, gamma=1.0, **common)
    returns = batch_advantages(
        torch.zeros(2), token_rewards, mask, gamma=1.0, token_advantage="normalized_returns", **common
    )
    torch.testing.assert_close(process, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    torch.testing.assert_close(returns, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    # they differ once the steps sit at different places
    token_rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    process = batch_advantages(torch.zeros(2), token_rewards, mask, gamma=1.0, **common)
    returns = batch_advantages(
        torch.zeros(2), token_rewards, mask, gamma=1.0, token_advantage="normalized_returns", **common
    )
    # steps: 1 at row 0's t=0, and 0 at each last token: mean 1/3, centred 2/3, -1/3, -1/3
    torch.testing.assert_close(process, torch.tensor([[1.0, -1.0], [-1.0, -1.0]]) / 3)
    torch.testing.assert_close(returns, torch.tensor([[0.75, -0.25], [-0.25, -0.25]]))
    with pytest.raises(ValueError, match="token_advantage=normalized_returns"):
        estimator_token_rewards(
            "grpo", torch.zeros(2), token_rewards, mask, kl_in_reward=True, token_advantage="process_supervision"
        )


def test_gdpo_normalizes_each_reward_in_its_group_before_summing():
    """Rewards of different scales: a 0/1 one and a 0/10 one. GRPO on their sum lets the large one
    dominate; GDPO keeps the small one's signal (rows 0 and 1 differ only by it)."""
    from grpo_lightning.algo.advantages import gdpo

    small, large = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 10.0, 10.0])
    ids = torch.zeros(4, dtype=torch.long)
    adv = gdpo(torch.stack([small, large]), torch.tensor([1.0, 1.0]), group_ids=ids, group_size=4, eps=0.0)
    # each normalized in the group: (1, -1, 1, -1) and (-1, -1, 1, 1); summed (0, -2, 2, 0); std sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, 1.0, 0.0]) * math.sqrt(2))
    summed = _run("grpo", small + large, ids, 4)
    assert summed[0] != summed[1] and abs(summed[0] - summed[1]) < abs(adv[0] - adv[1])
    # weights scale each normalized reward; a function constant within its group adds 0 there
    weighted = gdpo(
        torch.stack([small, torch.full((4,), 3.0)]), torch.tensor([2.0, 5.0]), group_ids=ids, group_size=4, eps=0.0
    )
    torch.testing.assert_close(weighted, torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_gdpo_leaves_out_the_completions_a_function_did_not_apply_to():
    from grpo_lightning.algo.advantages import gdpo

    ids = torch.zeros(4, dtype=torch.long)
    scores = torch.tensor([1.0, 0.0, 0.0, 5.0])  # the 5.0 did not apply (stored as 0 would pull the mean)
    applicable = torch.tensor([[True, True, True, False]])
    adv = gdpo(scores.unsqueeze(0), torch.tensor([1.0]), group_ids=ids, group_size=4, eps=0.0, applicable=applicable)
    # over the three applicable: mean 1/3, std sqrt(2)/3 -> (sqrt2, -1/sqrt2, -1/sqrt2), and 0 for the last;
    # then whitened over the batch (mean 0, population std sqrt(3/4)... of (sqrt2, -1/sqrt2, -1/sqrt2, 0))
    summed = torch.tensor([math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2), 0.0])
    torch.testing.assert_close(adv, (summed - summed.mean()) / summed.std(unbiased=False))


def test_gdpo_needs_each_functions_scores():
    with pytest.raises(ValueError, match="needs each reward function's scores"):
        batch_advantages(
            torch.zeros(4),
            None,
            torch.ones(4, 1),
            estimator="gdpo",
            group_ids=torch.zeros(4, dtype=torch.long),
            group_size=4,
            eps=0.0,
            scale_rewards="none",
            gamma=1.0,
        )
