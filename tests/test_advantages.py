"""Group-relative advantages on hand-computed values."""

import math

import pytest
import torch

from grpo_lightning.algo.advantages import ADV_ESTIMATORS, get_adv_estimator, normalize_group_rewards, register_adv_estimator


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
        adv = get_adv_estimator("test_sign_only")(torch.tensor([3.0, 1.0]), group_ids=torch.zeros(2),
                                                  group_size=2, eps=1e-8, normalize_by_std=True)
        assert torch.equal(adv, torch.tensor([1.0, -1.0]))
        with pytest.raises(ValueError, match="already registered"):
            register_adv_estimator("test_sign_only")(sign_only)
    finally:
        ADV_ESTIMATORS.pop("test_sign_only")
