"""No redundant forward passes: old log-probs only when the policy moves within a batch,
reference log-probs only when beta > 0."""

import pytest
import torch

from grpo_lightning.config import GRPOConfig
from grpo_lightning.data.tasks.arithmetic import correct_answer
from grpo_lightning.module import GRPOModule
from grpo_lightning.rewards import WeightedReward
from grpo_lightning.types import Experience, TokenBatch


def _count_scoring_passes(policy, algorithm: GRPOConfig):
    module = GRPOModule(policy, WeightedReward({"correct": (correct_answer, 1.0)}), algorithm=algorithm)
    calls = []
    real = policy.logprobs_and_entropy

    def counting(batch, **kwargs):
        calls.append(kwargs.get("reference", False))
        return real(batch, **kwargs)

    policy.logprobs_and_entropy = counting
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34="] * 4)
    tokens = TokenBatch(prompt_ids, prompt_mask, torch.full((4, 3), 5), torch.ones(4, 3, dtype=torch.long))
    experience = Experience(tokens=tokens, rewards=torch.zeros(4), group_ids=torch.tensor([0, 0, 1, 1]), group_size=2)
    update = module._prepare_update(experience)
    return calls, update


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_one_update_per_batch_needs_no_old_logprob_pass(arith_policy, beta):
    calls, update = _count_scoring_passes(arith_policy, GRPOConfig(group_size=2, beta=beta))
    assert update.old_logprobs is None  # the update uses logprobs.detach()
    assert calls == ([True] if beta > 0 else [])  # only the reference pass, and only with KL
    assert (arith_policy.reference_model is not None) == (beta > 0)
    assert (update.ref_logprobs is not None) == (beta > 0)


@pytest.mark.parametrize("changes", [{"num_iterations": 2}, {"mini_batch_size": 2}])
def test_old_logprobs_are_computed_when_the_policy_moves_within_a_batch(arith_policy, changes):
    calls, update = _count_scoring_passes(arith_policy, GRPOConfig(group_size=2, beta=0.0, **changes))
    assert update.old_logprobs is not None and update.old_logprobs.shape == (4, 3)
    assert calls and not any(calls)  # policy passes only (in chunks), no reference


@pytest.mark.parametrize("fused, expected", [(None, True), (True, True), (False, False)])
def test_adamw_is_fused_where_torch_supports_it(arith_policy, fused, expected):
    from grpo_lightning.config import OptimConfig

    module = GRPOModule(
        arith_policy, WeightedReward({"correct": (correct_answer, 1.0)}), optim=OptimConfig(lr=1e-3, fused=fused)
    )
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) is expected  # fp32 on CPU: supported
