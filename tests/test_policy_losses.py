"""Policy-loss classes, aggregations and KL estimators on hand-computed tensors."""

import math

import pytest
import torch

from grpo_lightning.algo.kl import get_kl_estimator
from grpo_lightning.algo.losses import LOSS_AGGREGATIONS, POLICY_LOSSES, CISPOLoss, ClippedSurrogate, GSPOLoss, get_policy_loss, policy_objective, register_policy_loss

LOG = math.log


def _one_token(loss, ratio, adv):
    logp = torch.tensor([[LOG(ratio)]], requires_grad=True)
    value, stats = policy_objective(loss, logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1))
    value.backward()
    return value.item(), logp.grad.item(), stats


def test_clip_higher_is_asymmetric():
    loss = ClippedSurrogate(clip_low=0.2, clip_high=0.28)
    # A > 0, ratio 1.25: inside [0.8, 1.28] -> not clipped, loss -1.25, grad -1.25
    value, grad, stats = _one_token(loss, 1.25, 1.0)
    assert (value, grad, stats["clip_frac"].item()) == (pytest.approx(-1.25), pytest.approx(-1.25), 0.0)
    # A > 0, ratio 1.5: clipped at 1.28, no gradient
    value, grad, stats = _one_token(loss, 1.5, 1.0)
    assert (value, grad, stats["clip_frac"].item()) == (pytest.approx(-1.28), 0.0, 1.0)
    # A < 0, ratio 0.75: clipped at the LOW bound 0.8 -> min(-0.75, -0.8) = -0.8, loss 0.8, no grad
    value, grad, stats = _one_token(loss, 0.75, -1.0)
    assert (value, grad, stats["clip_frac"].item()) == (pytest.approx(0.8), 0.0, 1.0)


def test_negative_advantage_large_ratio_is_not_clipped_by_ppo():
    # PPO: A < 0 and ratio above 1 + eps: min(-r, -1.2) = -r, the gradient flows
    value, grad, stats = _one_token(ClippedSurrogate(0.2, 0.2), 4.0, -1.0)
    assert value == pytest.approx(4.0) and grad == pytest.approx(4.0) and stats["clip_frac"].item() == 0.0
    assert "dual_clip_frac" not in stats


def test_dual_clip_caps_negative_advantages():
    loss = ClippedSurrogate(0.2, 0.2, clip_ratio_c=3.0)
    assert "dual_clip_frac" in loss.stat_names
    # A = -1, ratio 4 > c = 3: loss capped at 3 * |A| = 3, no gradient
    value, grad, stats = _one_token(loss, 4.0, -1.0)
    assert value == pytest.approx(3.0) and grad == 0.0 and stats["dual_clip_frac"].item() == 1.0
    # A = -1, ratio 2 < c: unchanged PPO value 2 with gradient
    value, grad, stats = _one_token(loss, 2.0, -1.0)
    assert value == pytest.approx(2.0) and grad == pytest.approx(2.0) and stats["dual_clip_frac"].item() == 0.0
    # A = +1, ratio 4: dual-clip does not apply, the usual upper clip does
    value, grad, stats = _one_token(loss, 4.0, 1.0)
    assert value == pytest.approx(-1.2) and stats["dual_clip_frac"].item() == 0.0


def test_gspo_uses_the_sequence_ratio():
    # token log-ratios log 2 and 0 -> sequence ratio exp(log(2) / 2) = sqrt 2
    logp = torch.tensor([[LOG(2.0), 0.0]], requires_grad=True)
    s = math.sqrt(2.0)
    loss = GSPOLoss(clip_low=0.5, clip_high=0.5)        # 1.414 inside [0.5, 1.5]
    value, stats = policy_objective(loss, logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    value.backward()
    assert value.item() == pytest.approx(-s)
    # d(-s)/d logp_t = -s / |y| for each token
    torch.testing.assert_close(logp.grad, torch.tensor([[-s / 2, -s / 2]]))
    assert stats["ratio_mean"].item() == pytest.approx(s) and stats["clip_frac"].item() == 0.0
    # narrow range: the sequence is clipped as a whole, no gradient on any token
    logp.grad = None
    value, stats = policy_objective(GSPOLoss(3e-4, 4e-4), logp, torch.zeros(1, 2), torch.tensor([1.0]),
                                    torch.ones(1, 2))
    value.backward()
    assert value.item() == pytest.approx(-(1 + 4e-4)) and logp.grad.abs().sum() == 0
    assert stats["clip_frac"].item() == 1.0


def test_cispo_keeps_gradient_through_clipped_weights():
    loss = CISPOLoss(clip_low=0.2, clip_high=0.2)
    # ratio 2 -> weight clipped to 1.2 (detached); loss = -1.2 * A * logp, grad = -1.2 * A
    logp = torch.tensor([[LOG(2.0)]], requires_grad=True)
    value, stats = policy_objective(loss, logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    value.backward()
    assert value.item() == pytest.approx(-1.2 * LOG(2.0))
    assert logp.grad.item() == pytest.approx(-1.2)
    assert stats["clip_frac"].item() == 1.0 and set(stats) == set(loss.stat_names)


AGG_VALUES = torch.tensor([[1.0, 3.0, 7.0], [4.0, 0.0, 0.0]])
AGG_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("name, expected", [
    ("seq-mean-token-mean", ((1 + 3) / 2 + 4) / 2),     # 3.0
    ("token-mean", (1 + 3 + 4) / 3),
    ("seq-mean-token-sum", ((1 + 3) + 4) / 2),           # 4.0
    ("seq-mean-token-sum-norm", ((1 + 3) + 4) / 2 / 3),  # divided by the max length, 3
])
def test_loss_aggregations_by_hand(name, expected):
    assert LOSS_AGGREGATIONS[name](AGG_VALUES, AGG_MASK, 3).item() == pytest.approx(expected)


def test_aggregation_units_weight_micro_batches_exactly():
    # token-mean over the whole batch = weighted mean of per-micro-batch token-means, weights = units
    agg = LOSS_AGGREGATIONS["token-mean"]
    whole = agg(AGG_VALUES, AGG_MASK, 3)
    parts = [agg(AGG_VALUES[i:i + 1], AGG_MASK[i:i + 1], 3) * agg.units(AGG_MASK[i:i + 1]) / agg.units(AGG_MASK)
             for i in range(2)]
    assert sum(parts).item() == pytest.approx(whole.item())


def test_kl_estimators_by_hand():
    logp = torch.tensor([[LOG(0.5)]])
    ref = torch.tensor([[LOG(0.25)]])
    x = LOG(0.25) - LOG(0.5)   # log pi_ref - log pi = -log 2
    assert get_kl_estimator("k1")(logp, ref).item() == pytest.approx(-x)
    assert get_kl_estimator("k2")(logp, ref).item() == pytest.approx(0.5 * x * x)
    assert get_kl_estimator("k3")(logp, ref).item() == pytest.approx(math.exp(x) - x - 1)


def test_kl_estimator_and_beta_in_objective():
    logp = torch.tensor([[LOG(0.5), LOG(0.5)]])
    ref = torch.tensor([[LOG(0.25), LOG(0.5)]])
    value, stats = policy_objective(ClippedSurrogate(), logp, logp, torch.tensor([0.0]), torch.ones(1, 2),
                                    ref_logprobs=ref, kl_estimator=get_kl_estimator("k1"), beta=0.1)
    assert stats["grpo_kl"].item() == pytest.approx(LOG(2.0) / 2)
    assert value.item() == pytest.approx(0.1 * LOG(2.0) / 2)


def test_entropy_is_reported_without_bonus():
    value, stats = policy_objective(ClippedSurrogate(), torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0.0]),
                                    torch.ones(1, 2), entropy=torch.tensor([[1.0, 3.0]]), entropy_coef=0.0)
    assert value.item() == 0.0 and stats["entropy"].item() == pytest.approx(2.0)


def test_register_custom_policy_loss_from_user_code():
    @register_policy_loss("test_reinforce")
    class Reinforce:
        """Plain REINFORCE: -A * log pi."""

        stat_names = ("policy_loss",)

        def __call__(self, logprobs, old_logprobs, advantages, mask, aggregate):
            loss = aggregate(-advantages * logprobs, mask)
            return loss, {"policy_loss": loss}

    try:
        loss = get_policy_loss("test_reinforce")()
        value, stats = policy_objective(loss, torch.tensor([[-2.0]]), torch.tensor([[-2.0]]), torch.tensor([3.0]),
                                        torch.ones(1, 1))
        assert value.item() == pytest.approx(6.0) and set(stats) == {"policy_loss"}
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("test_reinforce")(Reinforce)
    finally:
        POLICY_LOSSES.pop("test_reinforce")


def test_kl_in_reward_by_hand():
    from grpo_lightning.algo.kl import kl_penalized_rewards

    kl = torch.tensor([[0.5, 1.0, 9.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, tokens = kl_penalized_rewards(torch.tensor([1.0, 0.0]), torch.ones(2, 3), kl, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([1.0 - 0.1 * 1.5, -0.1 * 2.0]))   # padding's 9 not counted
    torch.testing.assert_close(tokens, torch.tensor([[0.95, 0.9, 1.0], [0.8, 1.0, 1.0]]))


def test_entropy_without_grad_has_the_same_values():
    from grpo_lightning.policy.scoring.logprobs import token_scores_from_logits

    logits = torch.randn(3, 4, 7, requires_grad=True)
    ids = torch.randint(0, 7, (3, 4))
    lp, ent = token_scores_from_logits(logits, ids, with_entropy=True, chunk_size=2)
    lp2, ent2 = token_scores_from_logits(logits, ids, with_entropy=True, chunk_size=2, entropy_grad=False)
    assert ent.requires_grad and not ent2.requires_grad and lp2.requires_grad
    torch.testing.assert_close(ent.detach(), ent2)
    torch.testing.assert_close(lp, lp2)
