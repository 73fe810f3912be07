"""The GRPO loss on hand-computed tensors.

Policy-loss classes, aggregations and KL estimators on hand-computed tensors."""

import math

import pytest
import torch

from grpo_lightning.algo.kl import get_kl_estimator
from grpo_lightning.algo.losses import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    CISPOLoss,
    ClippedSurrogate,
    GSPOLoss,
    get_policy_loss,
    grpo_loss,
    kl_k3,
    policy_objective,
    register_policy_loss,
    sequence_then_token_mean,
)

LOG = math.log


def _loss(logp, old, adv, mask, **kw):
    kw = {"beta": 0.0, "entropy_coef": 0.0} | kw
    return grpo_loss(torch.tensor(logp), torch.tensor(old), torch.tensor(adv), torch.tensor(mask), **kw)


def test_ratio_one_is_reinforce():
    # ratio = 1: the value is -mean(A) and the gradient is -A * grad(logp) / n_tokens
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.ones(2, 2)
    loss, stats = grpo_loss(logp, logp.detach(), adv, mask, beta=0.0, entropy_coef=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.0 - 1.0) / 2)
    # d loss / d logp[i,t] = -A_i / (T_i * B) with B=2, T=2
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
    assert stats["clip_frac"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    assert stats["approx_kl"].item() == 0.0


def test_positive_advantage_clipped_above():
    # ratio 1.5 > 1.2, A = 1: min(1.5, 1.2) = 1.2 -> loss -1.2; clipped -> no gradient
    logp = torch.tensor([[LOG(1.5)]], requires_grad=True)
    loss, stats = grpo_loss(
        logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), clip_range=0.2, beta=0.0, entropy_coef=0.0
    )
    loss.backward()
    assert loss.item() == pytest.approx(-1.2)
    assert logp.grad.abs().sum() == 0
    assert stats["clip_frac"].item() == 1.0


def test_negative_advantage_clipping_as_ppo_defines():
    # A = -1. ratio 0.5 < 0.8: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped (no gradient)
    logp = torch.tensor([[LOG(0.5)]], requires_grad=True)
    loss, stats = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), beta=0.0, entropy_coef=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.8)
    assert logp.grad.abs().sum() == 0
    assert stats["clip_frac"].item() == 1.0
    # A = -1, ratio 1.5 > 1.2: min(-1.5, -1.2) = -1.5 -> loss 1.5, NOT clipped (gradient flows)
    logp = torch.tensor([[LOG(1.5)]], requires_grad=True)
    loss, stats = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), beta=0.0, entropy_coef=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(1.5)
    assert logp.grad.item() == pytest.approx(1.5)  # d(ratio * 1)/dlogp = ratio
    assert stats["clip_frac"].item() == 0.0


def test_masking_and_sequence_then_token_mean():
    # seq 0 (A=1): valid ratios 1 and 2; the second is clipped to 1.2 -> surrogates -1, -1.2
    # seq 1 (A=-1): one valid token, ratio 1 -> surrogate 1; the padded positions must not count
    logp = [[0.0, LOG(2.0), 5.0], [0.0, 9.0, 9.0]]
    old = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    mask = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    loss, stats = _loss(logp, old, [1.0, -1.0], mask, clip_range=0.2)
    seq0 = (-1.0 + -1.2) / 2
    seq1 = 1.0
    assert loss.item() == pytest.approx((seq0 + seq1) / 2)
    assert stats["policy_loss"].item() == pytest.approx((seq0 + seq1) / 2)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)  # 1 of 3 valid tokens
    assert stats["ratio_mean"].item() == pytest.approx((1 + 2 + 1) / 3)
    approx_kl = ((2 - 1) - LOG(2.0)) / 3
    assert stats["approx_kl"].item() == pytest.approx(approx_kl)


def test_padding_values_do_not_leak():
    base = _loss([[0.0, 0.0]], [[0.0, 0.0]], [1.0], [[1.0, 0.0]])[0]
    noisy = _loss([[0.0, 50.0]], [[0.0, -50.0]], [1.0], [[1.0, 0.0]])[0]
    assert base.item() == noisy.item()


@pytest.mark.parametrize("policy_loss", ["clip", "gspo", "cispo"])
@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_extreme_or_infinite_padding_keeps_loss_gradient_and_stats_finite(policy_loss, advantage):
    """A log-ratio of 100 on padding overflows exp in float32 and inf * 0 is NaN; an external
    batch may pad with -inf. Neither may reach the loss, its gradient or a statistic."""
    from grpo_lightning.algo.losses import build_policy_loss, policy_objective
    from grpo_lightning.config import GRPOConfig

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    clean = {}
    for pad_old, pad_ref in [(-3.0, -3.0), (-100.0, float("-inf")), (float("nan"), float("nan"))]:
        logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
        old = torch.tensor([[-1.1, -1.9, pad_old], [-0.4, pad_old, pad_old]])
        ref = torch.tensor([[-1.3, -2.2, pad_ref], [-0.6, pad_ref, pad_ref]])
        entropy = torch.tensor([[0.7, 0.9, float("nan")], [0.4, float("inf"), 0.0]])
        loss, stats = policy_objective(
            build_policy_loss(policy_loss, GRPOConfig()),
            logprobs,
            old,
            torch.tensor([advantage, -advantage]),
            mask,
            ref_logprobs=ref,
            beta=0.1,
            entropy=entropy,
            entropy_coef=0.01,
        )
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
        assert all(torch.isfinite(value) for value in stats.values()), stats
        if not clean:  # what the valid tokens alone give, with harmless padding
            clean = {"loss": loss.detach(), "grad": logprobs.grad.clone()} | stats
        torch.testing.assert_close(loss.detach(), clean["loss"])
        torch.testing.assert_close(logprobs.grad, clean["grad"])
        for name, value in stats.items():
            torch.testing.assert_close(value, clean[name])


@pytest.mark.parametrize(
    "aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_entropy_and_kl_are_reported_as_token_means_whatever_the_aggregation(aggregation):
    from grpo_lightning.algo.losses import LOSS_AGGREGATIONS, ClippedSurrogate, policy_objective

    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.5], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    entropy = torch.tensor([[1.0, 2.0, 3.0], [6.0, 9.0, 9.0]])
    _, stats = policy_objective(
        ClippedSurrogate(),
        logprobs,
        logprobs,
        torch.tensor([0.0, 0.0]),
        mask,
        ref_logprobs=ref,
        beta=0.5,
        entropy=entropy,
        aggregation=LOSS_AGGREGATIONS[aggregation],
        max_length=3,
    )
    assert stats["entropy"].item() == pytest.approx((1 + 2 + 3 + 6) / 4)
    k3 = math.exp(-0.5) + 0.5 - 1  # the one token where ref differs: x = -0.5
    assert stats["grpo_kl"].item() == pytest.approx(k3 / 4)
    # kl_penalty is the term the loss adds: beta times the KL aggregated as the loss is
    expected_term = {
        "seq-mean-token-mean": k3 / 3 / 2,
        "token-mean": k3 / 4,
        "seq-mean-token-sum": k3 / 2,
        "seq-mean-token-sum-norm": k3 / 2 / 3,
    }[aggregation]
    assert stats["kl_penalty"].item() == pytest.approx(0.5 * expected_term)


def test_kl_k3_by_hand_and_penalty():
    logp = torch.tensor([[LOG(0.5), LOG(0.25)]])
    ref = torch.tensor([[LOG(0.25), LOG(0.25)]])
    # x = ref - logp = log(0.5): exp(x) - x - 1 = 0.5 - log 0.5 - 1
    expected = torch.tensor([[0.5 - LOG(0.5) - 1, 0.0]])
    torch.testing.assert_close(kl_k3(logp, ref), expected)
    loss, stats = grpo_loss(
        logp, logp, torch.tensor([0.0]), torch.ones(1, 2), ref_logprobs=ref, beta=0.1, entropy_coef=0.0
    )
    assert stats["grpo_kl"].item() == pytest.approx(expected.mean().item())
    assert stats["kl_penalty"].item() == pytest.approx(0.1 * expected.mean().item())
    assert loss.item() == pytest.approx(0.1 * expected.mean().item())  # A = 0: only the KL term


def test_kl_k3_is_zero_at_equality_and_nonnegative():
    x = torch.randn(4, 5)
    assert torch.equal(kl_k3(x, x), torch.zeros(4, 5))
    assert (kl_k3(x, torch.randn(4, 5)) >= 0).all()


def test_entropy_bonus_subtracts():
    ent = torch.tensor([[2.0, 4.0]])
    loss, stats = grpo_loss(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.tensor([0.0]),
        torch.ones(1, 2),
        entropy=ent,
        beta=0.0,
        entropy_coef=0.1,
    )
    assert loss.item() == pytest.approx(-0.1 * 3.0)
    assert stats["entropy"].item() == pytest.approx(3.0)


def test_optional_stats_only_when_inputs_given():
    _, stats = _loss([[0.0]], [[0.0]], [1.0], [[1.0]])
    assert set(stats) == {"policy_loss", "clip_frac", "approx_kl", "ratio_mean"}
    assert all(not v.requires_grad for v in stats.values())


def test_token_level_advantages():
    loss, _ = _loss([[0.0, 0.0]], [[0.0, 0.0]], [[1.0, 3.0]], [[1.0, 1.0]])
    assert loss.item() == pytest.approx(-2.0)


def test_sequence_then_token_mean_weights_sequences_equally():
    values = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert sequence_then_token_mean(values, mask).item() == pytest.approx((1.0 + 4.0) / 2)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_a_fully_masked_sequence_is_not_part_of_a_mean_over_sequences(aggregation):
    """mask_truncated_completions masks whole sequences: the loss over the others must not shrink."""
    from grpo_lightning.algo.losses import LOSS_AGGREGATIONS

    agg = LOSS_AGGREGATIONS[aggregation]
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0], [9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert agg(values, mask, 2).item() == pytest.approx(agg(values[:2], mask[:2], 2).item())
    assert agg.units(mask).item() == 2.0


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
    loss = GSPOLoss(clip_low=0.5, clip_high=0.5)  # 1.414 inside [0.5, 1.5]
    value, stats = policy_objective(loss, logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    value.backward()
    assert value.item() == pytest.approx(-s)
    # d(-s)/d logp_t = -s / |y| for each token
    torch.testing.assert_close(logp.grad, torch.tensor([[-s / 2, -s / 2]]))
    assert stats["ratio_mean"].item() == pytest.approx(s) and stats["clip_frac"].item() == 0.0
    # narrow range: the sequence is clipped as a whole, no gradient on any token
    logp.grad = None
    value, stats = policy_objective(
        GSPOLoss(3e-4, 4e-4), logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2)
    )
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


def test_cispo_preset_bounds_leave_small_weights_and_cap_large_ones():
    """algorithm=cispo: clip_range_low 1.0 (no lower bound: the paper's), clip_range_high 4.0 (a cap
    of 5). Weights 0.1 and 3 pass as they are, 7 becomes 5; A = -1 on every token, token-mean."""
    loss = CISPOLoss(clip_low=1.0, clip_high=4.0)
    old = torch.zeros(1, 3)
    logp = torch.tensor([[LOG(0.1), LOG(3.0), LOG(7.0)]], requires_grad=True)
    token_mean = LOSS_AGGREGATIONS["token-mean"]
    value, stats = loss(logp, old, torch.tensor([[-1.0]]), torch.ones(1, 3), lambda v, m: token_mean(v, m, 3))
    value.backward()
    weights = torch.tensor([[0.1, 3.0, 5.0]])
    assert value.item() == pytest.approx((weights * logp.detach()).sum().item() / 3)
    torch.testing.assert_close(logp.grad, weights / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)


AGG_VALUES = torch.tensor([[1.0, 3.0, 7.0], [4.0, 0.0, 0.0]])
AGG_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("seq-mean-token-mean", ((1 + 3) / 2 + 4) / 2),  # 3.0
        ("token-mean", (1 + 3 + 4) / 3),
        ("seq-mean-token-sum", ((1 + 3) + 4) / 2),  # 4.0
        ("seq-mean-token-sum-norm", ((1 + 3) + 4) / 2 / 3),  # divided by the max length, 3
    ],
)
def test_loss_aggregations_by_hand(name, expected):
    assert LOSS_AGGREGATIONS[name](AGG_VALUES, AGG_MASK, 3).item() == pytest.approx(expected)


def test_aggregation_units_weight_micro_batches_exactly():
    # token-mean over the whole batch = weighted mean of per-micro-batch token-means, weights = units
    agg = LOSS_AGGREGATIONS["token-mean"]
    whole = agg(AGG_VALUES, AGG_MASK, 3)
    parts = [
        agg(AGG_VALUES[i : i + 1], AGG_MASK[i : i + 1], 3) * agg.units(AGG_MASK[i : i + 1]) / agg.units(AGG_MASK)
        for i in range(2)
    ]
    assert sum(parts).item() == pytest.approx(whole.item())


def test_kl_estimators_by_hand():
    logp = torch.tensor([[LOG(0.5)]])
    ref = torch.tensor([[LOG(0.25)]])
    x = LOG(0.25) - LOG(0.5)  # log pi_ref - log pi = -log 2
    assert get_kl_estimator("k1")(logp, ref).item() == pytest.approx(-x)
    assert get_kl_estimator("k2")(logp, ref).item() == pytest.approx(0.5 * x * x)
    assert get_kl_estimator("k3")(logp, ref).item() == pytest.approx(math.exp(x) - x - 1)


def test_kl_estimator_and_beta_in_objective():
    logp = torch.tensor([[LOG(0.5), LOG(0.5)]])
    ref = torch.tensor([[LOG(0.25), LOG(0.5)]])
    value, stats = policy_objective(
        ClippedSurrogate(),
        logp,
        logp,
        torch.tensor([0.0]),
        torch.ones(1, 2),
        ref_logprobs=ref,
        kl_estimator=get_kl_estimator("k1"),
        beta=0.1,
    )
    assert stats["grpo_kl"].item() == pytest.approx(LOG(2.0) / 2)
    assert value.item() == pytest.approx(0.1 * LOG(2.0) / 2)


def test_entropy_is_reported_without_bonus():
    value, stats = policy_objective(
        ClippedSurrogate(),
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.tensor([0.0]),
        torch.ones(1, 2),
        entropy=torch.tensor([[1.0, 3.0]]),
        entropy_coef=0.0,
    )
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
        value, stats = policy_objective(
            loss, torch.tensor([[-2.0]]), torch.tensor([[-2.0]]), torch.tensor([3.0]), torch.ones(1, 1)
        )
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
    torch.testing.assert_close(rewards, torch.tensor([1.0 - 0.1 * 1.5, -0.1 * 2.0]))  # padding's 9 not counted
    torch.testing.assert_close(tokens, torch.tensor([[0.95, 0.9, 1.0], [0.8, 1.0, 1.0]]))


def test_entropy_without_grad_has_the_same_values():
    from grpo_lightning.policy.scoring.logprobs import logprobs_from_logits

    logits = torch.randn(3, 4, 7, requires_grad=True)
    ids = torch.randint(0, 7, (3, 4))
    lp, ent = logprobs_from_logits(logits, ids, with_entropy=True, chunk_size=2)
    lp2, ent2 = logprobs_from_logits(logits, ids, with_entropy=True, chunk_size=2, entropy_grad=False)
    assert ent.requires_grad and not ent2.requires_grad and lp2.requires_grad
    torch.testing.assert_close(ent.detach(), ent2)
    torch.testing.assert_close(lp, lp2)
