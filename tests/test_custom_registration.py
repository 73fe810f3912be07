"""Registering an advantage estimator and a policy loss from user code, then training with them."""

import csv

import pytest
import torch

from grpo_lightning.algo.advantages import ADV_ESTIMATORS, normalize_group_rewards, register_adv_estimator
from grpo_lightning.algo.losses import POLICY_LOSSES, register_policy_loss
from grpo_lightning.run.train import train


@pytest.fixture
def user_variants():
    @register_adv_estimator("test_sign")
    def sign(rewards, *, group_ids, group_size, eps, normalize_by_std):
        """+1 above the group mean, -1 below."""
        return torch.sign(normalize_group_rewards(rewards, group_size, eps, normalize_by_std=False))

    @register_policy_loss("test_reinforce")
    class Reinforce:
        """-A * log pi, aggregated as configured; reports a stat of its own."""

        stat_names = ("policy_loss", "logprob_mean")

        def __call__(self, logprobs, old_logprobs, advantages, mask, aggregate):
            loss = aggregate(-advantages * logprobs, mask)
            return loss, {"policy_loss": loss, "logprob_mean": aggregate(logprobs, mask)}

    yield
    ADV_ESTIMATORS.pop("test_sign")
    POLICY_LOSSES.pop("test_reinforce")


def test_user_registered_estimator_and_loss_train(user_variants, compose_config, random_arith_dir, tmp_path):
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "algorithm.adv_estimator=test_sign",
        "algorithm.policy_loss=test_reinforce",
        "trainer.max_steps=1",
        "validate_before_training=false",
    )
    train(cfg)
    with open(tmp_path / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("actor/policy_loss")]
    assert len(rows) == 1
    assert float(rows[0]["actor/logprob_mean"]) < 0  # the custom stat was declared and logged
    assert "actor/clip_frac" not in rows[0]  # not computed by this loss, so not logged
    assert abs(float(rows[0]["actor/adv_mean"])) <= 1
