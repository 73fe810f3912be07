"""The reward contract: weighted sums, None as not applicable, loud failures."""

import math

import pytest
import torch

from grpo_lightning.config import ConfigError, RewardConfig, RewardFunctionConfig
from grpo_lightning.rewards import RewardError, WeightedReward


def length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def answer_match(prompts, completions, answer, **columns):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def only_even(prompts, completions, **columns):
    return [1.0 if len(c) % 2 == 0 else None for c in completions]


def scaled(prompts, completions, factor, **columns):
    return [factor] * len(completions)


def test_weighted_sum_and_columns():
    reward = WeightedReward({"len": (length_reward, 0.5), "match": (answer_match, 2.0)})
    scores = reward(["p", "q"], ["ab", "xyz"], {"answer": ["ab", "no"]})
    torch.testing.assert_close(scores.total, torch.tensor([0.5 * 2 + 2.0 * 1, 0.5 * 3 + 0.0]))
    torch.testing.assert_close(scores.per_function["len"], torch.tensor([2.0, 3.0]))


def test_none_is_left_out_of_mean_and_zero_in_total():
    reward = WeightedReward({"even": (only_even, 1.0)})
    scores = reward(["p", "q", "r"], ["ab", "abc", "abcd"], {})
    assert scores.applicable["even"].tolist() == [True, False, True]
    torch.testing.assert_close(scores.total, torch.tensor([1.0, 0.0, 1.0]))


def test_from_config_binds_kwargs_by_import_path():
    cfg = RewardConfig(
        functions={
            "k": RewardFunctionConfig(fn="tests.rewards.test_rewards.scaled", weight=3.0, kwargs={"factor": 0.5})
        }
    )
    scores = WeightedReward.from_config(cfg)(["p"], ["c"], {})
    assert scores.total.item() == pytest.approx(1.5)


def test_unresolvable_import_path_names_the_field():
    cfg = RewardConfig(functions={"bad": RewardFunctionConfig(fn="tests.nowhere.fn")})
    with pytest.raises(ConfigError, match=r"reward.functions.bad.fn='tests.nowhere.fn' does not resolve"):
        WeightedReward.from_config(cfg)


def test_exception_names_function_and_offending_prompt():
    def picky(prompts, completions, **columns):
        return [1.0 / (len(c) - 3) for c in completions]

    reward = WeightedReward({"picky": (picky, 1.0)})
    with pytest.raises(RewardError, match=r"'picky' raised ZeroDivisionError.*prompt 'second'"):
        reward(["first", "second"], ["ab", "abc"], {})


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda p, c, **k: [1.0], "returned 1 values for 2 completions"),
        (lambda p, c, **k: [math.nan, 1.0], "returned nan for prompt 'a'"),
        (lambda p, c, **k: [1.0, math.inf], "returned inf for prompt 'b'"),
        (lambda p, c, **k: ["yes", 1.0], "return a float or None"),
        (lambda p, c, **k: ["1.0", 1.0], "returned the string '1.0' for prompt 'a'; return a float or None"),
        (lambda p, c, **k: [1e300, 1.0], "beyond float32's range"),
    ],
)
def test_bad_return_values_fail_loudly(bad, message):
    with pytest.raises(RewardError, match=message):
        WeightedReward({"bad": (bad, 1.0)})(["a", "b"], ["x", "y"], {})


def test_turn_rewards_of_agent_episodes_add_up_by_turn():
    per_turn = (lambda p, c, **k: [[0.5, 1.0], None, [math.nan]], 2.0)
    per_episode = (lambda p, c, **k: [1.0, 3.0, 0.25], 1.0)
    reward = WeightedReward({"turns": per_turn, "episode": per_episode}, non_finite="zero")
    scores = reward(["a", "b", "c"], ["x", "y", "z"], {}, turns=[2, 3, 1])
    # Each turn weighted, the episode's other rewards on its last turn; a row's turns sum to its total.
    assert scores.turn_rewards == [[1.0, 3.0], [0.0, 0.0, 3.0], [0.25]]
    assert scores.total.tolist() == [4.0, 3.0, 0.25] and scores.per_function["turns"].tolist() == [1.5, 0.0, 0.0]
    assert scores.non_finite == {"turns": 1, "episode": 0}
    episode_only = WeightedReward({"episode": per_episode})
    assert episode_only(["a", "b", "c"], ["x", "y", "z"], {}, turns=[2, 3, 1]).turn_rewards is None


@pytest.mark.parametrize(
    "turns, message",
    [
        (None, "returned a list for prompt 'a'; one reward per turn is for agent episodes only"),
        ([1], "returned 2 turn rewards for an episode of 1 assistant turns"),
        ([2], "returned nan for prompt 'a'"),
    ],
)
def test_turn_rewards_that_do_not_fit_fail_loudly(turns, message):
    with pytest.raises(RewardError, match=message):
        WeightedReward({"bad": (lambda p, c, **k: [[1.0, math.nan]], 1.0)})(["a"], ["x"], {}, turns=turns)


def test_booleans_and_ints_are_numbers():
    scores = WeightedReward({"b": (lambda p, c, **k: [True, 0], 1.0)})(["a", "b"], ["x", "y"], {})
    assert scores.total.tolist() == [1.0, 0.0]


def test_a_misspelt_kwarg_is_refused_rather_than_swallowed_by_the_columns():
    cfg = RewardConfig(
        functions={"k": RewardFunctionConfig(fn="tests.rewards.test_rewards.scaled", kwargs={"factr": 0.5})}
    )
    with pytest.raises(ConfigError, match=r"reward.functions.k.kwargs: factr is not a parameter of scaled .*factor"):
        WeightedReward.from_config(cfg)


def test_a_reward_that_applies_to_nothing_in_a_batch_is_warned_once():
    from grpo_lightning.rewards import composite

    composite._WARNED_ALL_NONE.discard("never")
    reward = WeightedReward({"never": (lambda p, c, **k: [None] * len(c), 1.0)})
    with pytest.warns(UserWarning, match="'never' returned None .* for every completion"):
        reward(["a", "b"], ["x", "y"], {})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reward(["a", "b"], ["x", "y"], {})  # once per function


def test_val_fraction_beside_val_path_is_refused(compose_config):
    from grpo_lightning.config import to_train_config

    base = ["model.name_or_path=/x", "data=jsonl", "data.path=a.jsonl", "data.val_path=b.jsonl"]
    with pytest.raises(ConfigError, match=r"data.val_fraction=0.2 applies only without data.val_path"):
        to_train_config(compose_config(*base, "data.val_fraction=0.2"))
    to_train_config(compose_config(*base))  # the default fraction is not a choice


def test_a_reward_that_does_not_return_in_time_stops_the_run_naming_it():
    import time

    def slow(prompts, completions, **columns):
        try:
            time.sleep(5)
        except Exception:  # a function's own catch-all must not swallow the time limit
            pass
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=r"'slow' did not return within 0.2 s \(reward.timeout_s\)"):
        WeightedReward({"slow": (slow, 1.0)}, timeout_s=0.2)(["a"], ["x"], {})
    fast = WeightedReward({"fast": (lambda p, c, **k: [1.0] * len(c), 1.0)}, timeout_s=0.2)
    assert fast(["a"], ["x"], {}).total.tolist() == [1.0]
    time.sleep(0.3)  # the timer was cancelled: nothing fires after the call


def test_reward_timeout_must_be_positive_or_null(compose_config):
    from grpo_lightning.config import to_train_config

    with pytest.raises(ConfigError, match=r"reward.timeout_s must be > 0 or null \(no limit\) \(got 0.0\)"):
        to_train_config(compose_config("reward.timeout_s=0"))
    assert to_train_config(compose_config("reward.timeout_s=null")).reward.timeout_s is None
