"""Non-finite losses/gradients are skipped and counted; non-finite rewards error or count as 0."""

import csv
import math

import pytest
import torch

from grpo_lightning.algo.numerics import NonFiniteError, SkipGuard
from grpo_lightning.distributed import global_mean_std, global_sum
from grpo_lightning.rewards import RewardError, WeightedReward
from grpo_lightning.run.train import train


def test_skip_guard_counts_and_fails_after_the_limit():
    guard = SkipGuard(max_consecutive=2)
    assert guard.check(True, 0)
    assert not guard.check(False, 1)
    assert not guard.check(False, 2)
    with pytest.raises(NonFiniteError, match="3 consecutive updates had a non-finite loss or gradient norm"):
        guard.check(False, 3)
    guard = SkipGuard(max_consecutive=1)
    assert not guard.check(False, 0)
    assert guard.check(True, 1)  # a good update resets the streak
    assert not guard.check(False, 2)
    assert guard.state_dict() == {"total": 2, "consecutive": 1}


def _nan_reward(prompts, completions, **columns):
    return [float("nan") if i % 2 else 1.0 for i in range(len(completions))]


def test_non_finite_rewards_error_by_default_or_count_as_zero():
    with pytest.raises(RewardError, match="returned nan for prompt 'p1'.*reward.non_finite=zero"):
        WeightedReward({"r": (_nan_reward, 1.0)})(["p0", "p1"], ["a", "b"], {})
    scores = WeightedReward({"r": (_nan_reward, 2.0)}, non_finite="zero")(["p"] * 4, ["a"] * 4, {})
    assert scores.total.tolist() == [2.0, 0.0, 2.0, 0.0]
    assert scores.non_finite == {"r": 2}


def test_global_mean_std_in_one_process_is_the_plain_statistic():
    x = torch.tensor([1.0, 2.0, 4.0, 9.0])
    mean, std = global_mean_std(x)
    assert mean.item() == pytest.approx(4.0) and std.item() == pytest.approx(math.sqrt(9.5))
    mean, std = global_mean_std(x, mask=torch.tensor([1, 1, 0, 0]))
    assert mean.item() == pytest.approx(1.5) and std.item() == pytest.approx(0.5)
    assert global_sum(torch.tensor(3.0)).item() == 3.0


def test_a_non_finite_loss_skips_the_update_and_is_logged(compose_config, random_arith_dir, tmp_path, monkeypatch):
    import grpo_lightning.module as module

    calls = {"n": 0}
    real_loss = module.policy_objective

    def first_loss_nan(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 1 else loss), stats

    monkeypatch.setattr(module, "policy_objective", first_loss_nan)
    train(
        compose_config(
            f"model.name_or_path={random_arith_dir}",
            "algorithm.max_consecutive_skips=1",
            "trainer.max_steps=2",
            "validate_before_training=false",
        )
    )
    with open(tmp_path / "metrics.csv") as handle:
        skipped = [float(r["actor/skipped_updates"]) for r in csv.DictReader(handle) if r["actor/skipped_updates"]]
    assert skipped == [1.0, 1.0]  # cumulative count, logged every step

    def always_nan(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(module, "policy_objective", always_nan)  # every update skipped: the run must stop
    with pytest.raises(NonFiniteError, match="max_consecutive_skips=1"):
        train(
            compose_config(
                f"model.name_or_path={random_arith_dir}",
                "algorithm.max_consecutive_skips=1",
                "trainer.max_steps=3",
                "validate_before_training=false",
                f"output_dir={tmp_path}/b",
            )
        )
