"""Rollout corrections (TIS, IcePop, sequence masking) and the 2025 policy losses (SAPO, GMPO,
Clip-Cov, KL-Cov) on hand-computed tensors, including the off-policy case where the sampler's and
the trainer's log-probs differ."""

import math
from types import SimpleNamespace

import pytest
import torch

from grpo_lightning.algo.correction import ROLLOUT_CORRECTIONS, correct_advantages, correction_stats
from grpo_lightning.algo.losses import LOSS_AGGREGATIONS, ClipCovLoss, GMPOLoss, KLCovLoss, SAPOLoss

LOG = math.log
ALG = SimpleNamespace(rollout_is_cap=2.0, rollout_mask_low=0.5, rollout_mask_high=5.0, rollout_seq_kl_threshold=0.1)
# trainer p vs sampler q per token: w = p / q = 1, 0.5, 3, 8 (the last one padding)
TRAINER = torch.tensor([[0.0, 0.0, LOG(3.0), LOG(8.0)]])
SAMPLER = torch.tensor([[0.0, LOG(2.0), 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
ADV = torch.tensor([[1.0]])


def token_mean(values, mask):
    return LOSS_AGGREGATIONS["token-mean"](values, mask, values.size(1))


def seq_mean(values, mask):
    return LOSS_AGGREGATIONS["seq-mean-token-mean"](values, mask, values.size(1))


def test_tis_caps_the_weight_and_padding_weighs_one():
    weights = ROLLOUT_CORRECTIONS["tis"](TRAINER, SAMPLER, ADV, MASK, ALG)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.5, 2.0, 1.0]]))


def test_icepop_keeps_the_weight_inside_its_bounds_and_zero_outside():
    weights = ROLLOUT_CORRECTIONS["icepop"](TRAINER, SAMPLER, ADV, MASK, ALG)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.5, 3.0, 1.0]]))
    far = torch.tensor([[LOG(0.4), LOG(6.0), 0.0]])
    weights = ROLLOUT_CORRECTIONS["icepop"](far, torch.zeros(1, 3), ADV, torch.ones(1, 3), ALG)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.0, 1.0]]))


def test_sequence_masking_drops_only_negative_sequences_far_off_policy():
    # per-token KL estimate log q - log p, averaged over each row's valid tokens
    trainer = torch.tensor([[-0.5, -0.5], [-0.5, -0.5], [-0.01, -0.01]])
    sampler = torch.zeros(3, 2)  # rows 0, 1: KL 0.5 > 0.1; row 2: KL 0.01
    advantages = torch.tensor([[1.0], [-1.0], [-1.0]])
    weights = ROLLOUT_CORRECTIONS["seq_mask"](trainer, sampler, advantages, torch.ones(3, 2), ALG)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))


def test_correction_scales_each_tokens_advantage_and_reports_the_gap():
    advantages, stats = correct_advantages("tis", TRAINER, SAMPLER, torch.tensor([[2.0]]), MASK, ALG)
    torch.testing.assert_close(advantages, torch.tensor([[2.0, 1.0, 4.0, 2.0]]))
    # valid tokens: |log p - log q| = 0, log 2, log 3; w = 1, 0.5, 3; applied 1, 0.5, 2
    assert stats["rollout/logprob_gap"].item() == pytest.approx((LOG(2) + LOG(3)) / 3)
    assert stats["rollout/is_ratio_mean"].item() == pytest.approx(4.5 / 3)
    assert stats["rollout/is_ratio_max"].item() == pytest.approx(3.0)
    assert stats["rollout/corrected_frac"].item() == pytest.approx(1 / 3)
    assert stats["rollout/ess"].item() == pytest.approx(3.5**2 / (3 * (1 + 0.25 + 4)))
    on_policy = correction_stats(SAMPLER, SAMPLER, torch.ones(1, 4), MASK)
    assert on_policy["rollout/ess"].item() == pytest.approx(1.0) and on_policy["rollout/logprob_gap"].item() == 0


def test_sapo_is_a_smooth_gate_with_the_ppo_slope_on_policy():
    loss_fn = SAPOLoss(temperature_pos=1.0, temperature_neg=1.05)
    logp = torch.tensor([[0.2]], requires_grad=True)
    loss, stats = loss_fn(logp, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1), token_mean)
    ratio = math.exp(0.2)
    gate = 1 / (1 + math.exp(-(ratio - 1)))
    assert loss.item() == pytest.approx(-4 * gate)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-4 * gate * (1 - gate) * ratio)  # d/dlogp through r = e^logp
    assert stats["gate_mean"].item() == pytest.approx(4 * gate * (1 - gate))
    # A < 0 uses tau_neg; on policy (r = 1) the gradient is -A, as PPO's
    logp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = loss_fn(logp, torch.zeros(1, 1), torch.tensor([[-2.0]]), torch.ones(1, 1), token_mean)
    assert loss.item() == pytest.approx(-(4 / 1.05) * 0.5 * -2.0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(2.0)


def test_gmpo_takes_the_geometric_mean_of_ratios_clipped_in_log_space():
    loss_fn = GMPOLoss(clip_low=0.4, clip_high=0.4)
    log_ratio = torch.tensor([[0.5, -0.1]])
    # A > 0: min(l, clip(l)) = (0.4, -0.1), mean 0.15 -> loss -A e^0.15
    positive, stats = loss_fn(log_ratio.clone(), torch.zeros(1, 2), torch.tensor([[1.0]]), torch.ones(1, 2), seq_mean)
    assert positive.item() == pytest.approx(-math.exp(0.15)) and stats["clip_frac"].item() == 0.5
    # A < 0: max(l, clip(l)) = (0.5, -0.1), mean 0.2 -> loss +|A| e^0.2, nothing clipped
    negative, stats = loss_fn(log_ratio.clone(), torch.zeros(1, 2), torch.tensor([[-1.0]]), torch.ones(1, 2), seq_mean)
    assert negative.item() == pytest.approx(math.exp(0.2)) and stats["clip_frac"].item() == 0.0
    # a clipped token gets no gradient; the other gets -A e^mean / |o|
    logp = torch.tensor([[0.5, -0.1]], requires_grad=True)
    loss, _ = loss_fn(logp, torch.zeros(1, 2), torch.tensor([[1.0]]), torch.ones(1, 2), seq_mean)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -math.exp(0.15) / 2]]))


# Four valid tokens, on policy (r = 1): advantages (3, -1, -1, -1) (mean 0) and log-probs
# (-1, -3, -3, -1) (mean -2) give covariances (3, 1, 1, -1).
COV_LOGP = torch.tensor([[-1.0, -3.0, -3.0, -1.0]])
COV_ADV = torch.tensor([[3.0, -1.0, -1.0, -1.0]])


def test_clip_cov_cuts_the_gradient_of_a_random_token_among_those_in_its_covariance_band():
    loss_fn = ClipCovLoss(0.2, 0.2, ratio=0.25, lower=0.5, upper=2.0)  # band (0.5, 2): tokens 1 and 2; one cut
    logp = COV_LOGP.clone().requires_grad_(True)
    torch.manual_seed(0)
    loss, stats = loss_fn(logp, COV_LOGP, COV_ADV, torch.ones(1, 4), token_mean)
    (grad,) = torch.autograd.grad(loss, logp)
    # PPO on policy: d/dlogp (-r A) = -A / 4 per token (token mean), except the cut token's 0
    cut = (grad == 0).nonzero()[:, 1].tolist()
    assert len(cut) == 1 and cut[0] in (1, 2)
    expected = -COV_ADV / 4
    expected[0, cut[0]] = 0.0
    torch.testing.assert_close(grad, expected)
    assert stats["clip_frac"].item() == pytest.approx(0.25)


def test_kl_cov_penalizes_the_tokens_of_highest_covariance():
    loss_fn = KLCovLoss(ratio=0.25, coef=2.0)  # one of four tokens: the first (covariance 3)
    logp = torch.tensor([[-0.9, -3.0, -3.0, -1.0]], requires_grad=True)  # token 0 moved: log r = 0.1
    loss, stats = loss_fn(logp, COV_LOGP, COV_ADV, torch.ones(1, 4), token_mean)
    expected = (-math.exp(0.1) * 3 + 2.0 * 0.1 + 1 + 1 + 1) / 4
    assert loss.item() == pytest.approx(expected) and stats["clip_frac"].item() == 0.25
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[(-math.exp(0.1) * 3 + 2.0) / 4, 0.25, 0.25, 0.25]]))


def test_adaptive_entropy_control_by_hand():
    from grpo_lightning.algo.entropy_control import next_entropy_coef

    assert next_entropy_coef(0.01, entropy=0.1, target=0.2, step=0.005) == pytest.approx(0.015)  # below: up
    assert next_entropy_coef(0.01, entropy=0.3, target=0.2, step=0.005) == pytest.approx(0.005)  # above: down
    assert next_entropy_coef(0.002, entropy=0.2, target=0.2, step=0.005) == 0.0  # at the target: down, not below 0


def test_only_the_highest_entropy_tokens_keep_their_policy_gradient():
    from grpo_lightning.algo.losses import ClippedSurrogate, policy_objective

    entropy = torch.tensor([[0.1, 2.0, 0.5, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the 9.0 is padding
    logp = torch.zeros(1, 5, requires_grad=True)
    loss, _ = policy_objective(
        ClippedSurrogate(),
        logp,
        torch.zeros(1, 5),
        torch.tensor([1.0]),
        mask,
        aggregation=LOSS_AGGREGATIONS["token-mean"],
        entropy=entropy,
        top_entropy_fraction=0.5,
    )
    (grad,) = torch.autograd.grad(loss, logp)
    # the top half of the four valid tokens: entropies 3.0 and 2.0; -A / 4 each (token mean over 4)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.25, 0.0, -0.25, 0.0]]))


def test_sequence_masking_reports_only_the_tokens_it_masked():
    trainer = torch.tensor([[-0.5, -0.5], [-0.01, -0.01]])
    advantages, stats = correct_advantages(
        "seq_mask", trainer, torch.zeros(2, 2), torch.tensor([-1.0, -1.0]), torch.ones(2, 2), ALG
    )
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.0], [-1.0, -1.0]]))
    assert stats["rollout/corrected_frac"].item() == pytest.approx(0.5)  # row 0's two tokens, not every w != 1
