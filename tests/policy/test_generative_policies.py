"""Policies of other action spaces on hand-computed values: the Gaussian policy's log-probability
and entropy, DDPM's per-step Gaussian log-probabilities, and the clipped ratio on both; the
Artifex batch layout."""

import math

import pytest
import torch

from grpo_lightning.algo.losses import LOSS_AGGREGATIONS, ClippedSurrogate
from grpo_lightning.policy.base import SamplingParams
from grpo_lightning.policy.diffusion import DiffusionPolicy, cosine_betas
from grpo_lightning.policy.gaussian import GaussianPolicy, gaussian_entropy, gaussian_log_prob
from grpo_lightning.types import TokenBatch

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def test_gaussian_log_prob_and_entropy_by_hand():
    actions = torch.tensor([[1.0, 0.0]])
    mean, std = torch.tensor([[0.0, 1.0]]), torch.tensor([1.0, 2.0])
    # dim 0: -(1)^2/2 - log 1 - c; dim 1: -(1)^2/(2*4) - log 2 - c
    expected = (-0.5 - HALF_LOG_2PI) + (-1 / 8 - math.log(2) - HALF_LOG_2PI)
    assert gaussian_log_prob(actions, mean, std).item() == pytest.approx(expected)
    assert gaussian_entropy(std).item() == pytest.approx(0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(2))


def _gaussian():
    torch.manual_seed(0)
    return GaussianPolicy(observation_dim=2, action_dim=3, hidden_size=8, init_log_std=-1.0)


def test_gaussian_rollout_is_grouped_and_its_log_probs_are_the_training_passes():
    policy = _gaussian()
    prompts = [[0.5, -0.5], [1.0, 0.0]]
    rollout = policy.rollout(prompts, {"tag": ["a", "b"]}, 4, SamplingParams(max_new_tokens=1))
    tokens = rollout.tokens
    assert tokens.completion_ids.shape == (8, 3) and tokens.completion_mask.shape == (8, 1)
    assert rollout.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and rollout.columns["tag"][4] == "b"
    assert rollout.prompts[3] == [0.5, -0.5] and len(rollout.completions[0]) == 3
    logprobs, entropy = policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=True)
    mean, std = policy.distribution(tokens.prompt_ids)
    torch.testing.assert_close(logprobs, gaussian_log_prob(tokens.completion_ids, mean, std).unsqueeze(1))
    assert logprobs.requires_grad and entropy.shape == (8, 1)
    greedy = policy.rollout(prompts, {}, 2, SamplingParams(max_new_tokens=1, do_sample=False))
    torch.testing.assert_close(greedy.tokens.completion_ids, mean[::4].repeat_interleave(2, dim=0))


def test_gaussian_reference_stays_where_it_was():
    policy = _gaussian()
    policy.enable_reference()
    tokens = policy.rollout([[0.1, 0.2]], {}, 2, SamplingParams(max_new_tokens=1)).tokens
    before = policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=False, reference=True)[0]
    with torch.no_grad():
        policy.log_std.add_(0.5)
        policy.mean[-1].bias.add_(1.0)
    after = policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=False, reference=True)[0]
    torch.testing.assert_close(before, after)
    assert not torch.allclose(before, policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=False)[0])
    assert all(p.requires_grad for p in policy.trainable_parameters())
    assert not any(p.requires_grad for p in policy.reference.parameters())


def test_clipped_ratio_on_gaussian_log_probs_by_hand():
    """One action a = 1 under old N(0, 1) and new N(0.5, 1): log ratio = (1 - 0.25) / 2 = 0.375,
    ratio 1.455 > 1.2: clipped for A > 0 (loss -1.2 A, no gradient), kept for A < 0."""
    mean = torch.tensor([[0.5]], requires_grad=True)
    std = torch.ones(1)
    logp = gaussian_log_prob(torch.tensor([[1.0]]), mean, std).unsqueeze(1)  # [1, 1]
    old = gaussian_log_prob(torch.tensor([[1.0]]), torch.zeros(1, 1), std).unsqueeze(1)
    assert (logp - old).item() == pytest.approx(0.375)
    ratio = math.exp(0.375)
    loss_fn = ClippedSurrogate(0.2, 0.2)
    seq_mean = LOSS_AGGREGATIONS["seq-mean-token-mean"]

    def aggregate(values, mask):
        return seq_mean(values, mask, 1)

    positive, stats = loss_fn(logp, old, torch.tensor([[2.0]]), torch.ones(1, 1), aggregate)
    assert positive.item() == pytest.approx(-1.2 * 2.0) and stats["clip_frac"].item() == 1.0
    (grad,) = torch.autograd.grad(positive, mean, retain_graph=True)
    assert grad.item() == 0.0
    negative, _ = loss_fn(logp, old, torch.tensor([[-2.0]]), torch.ones(1, 1), aggregate)
    assert negative.item() == pytest.approx(ratio * 2.0)
    (grad,) = torch.autograd.grad(negative, mean)
    # d/dmu of ratio * 2 = 2 * ratio * d(log ratio)/dmu = 2 * ratio * (a - mu) = 2 * ratio * 0.5
    assert grad.item() == pytest.approx(ratio)


def test_cosine_betas_by_hand():
    alphabar = [math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2 for s in (0.0, 0.5, 1.0)]
    expected = [min(1 - alphabar[1] / alphabar[0], 0.999), min(1 - alphabar[2] / alphabar[1], 0.999)]
    torch.testing.assert_close(cosine_betas(2), torch.tensor(expected))


def _zero_denoiser(steps=2):
    policy = DiffusionPolicy(image_shape=(2,), num_steps=steps, hidden_size=4)
    with torch.no_grad():
        policy.denoiser.output.weight.zero_()
        policy.denoiser.output.bias.zero_()
    return policy


def test_diffusion_step_log_probs_by_hand():
    """With eps_theta = 0 the step mean is x_t / sqrt(1 - beta_t): each step's log-probability is
    log N(x_{t-1}; x_t / sqrt(1 - beta_t), beta_t I), summed over the two pixels."""
    policy = _zero_denoiser()
    trajectory = torch.tensor([[[1.0, -1.0], [0.5, 0.0], [0.2, 0.1]]])  # x_2, x_1, x_0
    mask = torch.ones(1, 2, dtype=torch.long)
    batch = TokenBatch(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long), trajectory, mask)
    logprobs, entropy = policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=True)
    betas = cosine_betas(2).tolist()
    expected = []
    steps = ((trajectory[0, 0], trajectory[0, 1], betas[1]), (trajectory[0, 1], trajectory[0, 2], betas[0]))
    for x_t, x_prev, beta in steps:
        mean = (x_t / math.sqrt(1 - beta)).tolist()
        terms = [
            -((p - m) ** 2) / (2 * beta) - 0.5 * math.log(beta) - HALF_LOG_2PI for p, m in zip(x_prev.tolist(), mean)
        ]
        expected.append(sum(terms))
    torch.testing.assert_close(logprobs, torch.tensor([expected]))
    expected_entropy = [2 * (0.5 * math.log(b) + 0.5 * math.log(2 * math.pi * math.e)) for b in (betas[1], betas[0])]
    torch.testing.assert_close(entropy, torch.tensor([expected_entropy]))
    # temperature scales every sigma: the density of the same path under sigma * 2
    hot = policy.logprobs_and_entropy(batch, temperature=2.0, with_entropy=False)[0]
    assert (hot != logprobs).all()


def test_diffusion_rollout_keeps_the_trajectory_and_scores_what_it_sampled():
    torch.manual_seed(0)
    policy = DiffusionPolicy(image_shape=(2, 2), num_steps=3, hidden_size=8)
    rollout = policy.rollout(["digit"] * 2, {}, 3, SamplingParams(max_new_tokens=1))
    tokens = rollout.tokens
    assert tokens.completion_ids.shape == (6, 4, 4) and tokens.completion_mask.shape == (6, 3)
    assert rollout.completions[0].shape == (2, 2) and rollout.completions[0].abs().max() <= 1
    assert rollout.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    logprobs, _ = policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=False)
    assert logprobs.shape == (6, 3) and logprobs.requires_grad and torch.isfinite(logprobs).all()
    # the sampler's own steps: x_{t-1} - mean is sigma_t * noise, so each step's density is that of
    # a standard normal draw scaled by sigma_t, never far in the tail
    assert (logprobs > -50).all()


def test_diffusion_clipped_ratio_per_step_by_hand():
    """Per-step log-probs [B, K] with a mask over steps: the clip applies step by step, and
    seq-mean-token-mean averages the steps of a sample, then the samples."""
    logp = torch.tensor([[0.0, 0.5], [0.0, -0.5]], requires_grad=True)
    old = torch.zeros(2, 2)
    advantages = torch.tensor([[1.0], [-1.0]])
    loss, stats = ClippedSurrogate(0.2, 0.2)(
        logp, old, advantages, torch.ones(2, 2), lambda v, m: LOSS_AGGREGATIONS["seq-mean-token-mean"](v, m, 2)
    )
    # row 0: steps ratio 1 and e^0.5 = 1.65 (clipped at 1.2, A > 0): -(1 + 1.2)/2
    # row 1: ratio 1 and e^-0.5 = 0.61 (clipped at 0.8, A < 0): -min(-1, -1) and -min(-0.61, -0.8) = 0.8
    expected = (-(1 + 1.2) / 2 + (1 + 0.8) / 2) / 2
    assert loss.item() == pytest.approx(expected) and stats["clip_frac"].item() == pytest.approx(0.5)


def test_an_artifex_batch_is_taken_as_it_is():
    from grpo_lightning.data.external import external_experience, is_external

    batch = {
        "observations": torch.randn(6, 2),
        "actions": torch.randn(6, 3),
        "rewards": torch.tensor([1.0, 0.0, 0.5, 0.2, 0.1, 0.0]),
        "log_probs": torch.randn(6),
        "ref_log_probs": torch.randn(6),
        "group_size": 3,
    }
    assert is_external(batch)
    experience = external_experience(batch, 8)
    assert experience.group_size == 3 and experience.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert experience.tokens.completion_mask.shape == (6, 1) and experience.sampling_logprobs.shape == (6, 1)
    torch.testing.assert_close(experience.ref_logprobs, batch["ref_log_probs"].unsqueeze(1))
    with pytest.raises(ValueError, match="log_probs"):
        external_experience({k: v for k, v in batch.items() if k != "log_probs"}, 3)
    with pytest.raises(ValueError, match="group_size=4"):
        external_experience(dict(batch, group_size=4), 8)
