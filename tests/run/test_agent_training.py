"""Agents in the training step: GRPOModule on multi-turn episodes, with a scripted sampler
(tests/policy/agent_fixtures.py) so that each episode's course, and each reward, is known."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grpo_lightning.algo.advantages import ADV_ESTIMATORS, PER_REWARD
from grpo_lightning.algo.losses import POLICY_LOSSES
from grpo_lightning.config import ConfigError, GenerationConfig, GRPOConfig
from grpo_lightning.module import GRPOModule
from grpo_lightning.policy.agent import Agent
from grpo_lightning.rewards import WeightedReward
from tests.policy.agent_fixtures import chat_tokenizer, script_sampler, tiny_policy
from tests.policy.test_agent import Counter, multiply, multiply_script

BATCH = {"prompt": ["What is 12 * 34?", "What is 5 * 6?"], "answer": ["408", "30"]}


def fit(module: GRPOModule, batch: dict, steps: int, tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return trainer


def alternating_by_row(completions, **kwargs):
    """1, 0, 1, 0, ... : every group of an even size has spread, whatever was sampled."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def test_trl_style_tools_and_rewards_train_through_the_module(tmp_path):
    policy = tiny_policy(chat_tokenizer())
    script_sampler(policy, multiply_script)
    seen = []

    def correct(completions, answer, **kwargs):  # TRL's contract: keywords only
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    def inspect_episode(completions, conversations, environments, trainer_state, log_metric, log_extra, **kwargs):
        seen.append((trainer_state.global_step, len(conversations), environments))
        log_metric("episodes_seen", float(len(conversations)))
        log_extra("first_tool_result", [c[2]["content"] for c in conversations])
        return [0.0] * len(completions)

    reward = WeightedReward(
        {"correct": (correct, 1.0), "inspect": (inspect_episode, 0.0), "alt": (alternating_by_row, 1.0)}
    )
    module = GRPOModule(
        policy,
        reward,
        algorithm=GRPOConfig(group_size=2, beta=0.04, entropy_coef=0.0),
        generation=GenerationConfig(max_new_tokens=96),
        agent=Agent([multiply]),
    )
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    trainer = fit(module, BATCH, 2, tmp_path)
    metrics = trainer.callback_metrics
    assert metrics["agent/turns"].item() == 2 and metrics["agent/tool_calls"].item() == 1
    assert metrics["agent/ended_by/answer"].item() == 1 and metrics["agent/ended_by_limit"].item() == 0
    assert metrics["agent/tool_errors/timeout"].item() == 0
    assert metrics["agent/inserted_tokens"].item() > 0 and metrics["agent/sampled_tokens"].item() > 0
    assert metrics["reward/correct/mean"].item() == 1.0
    assert metrics["episodes_seen"].item() == 4.0
    assert [step for step, _, _ in seen] == [0, 1] and all(count == 4 for _, count, _ in seen)
    assert seen[0][2] == [None] * 4  # no environment: one None per episode
    sample = module.last_rollout
    assert sample.extra["first_tool_result"] == ["408", "408", "30", "30"]
    assert sample.extra["turns"] == [2, 2, 2, 2] and sample.extra["ended_by"] == ["answer"] * 4
    assert "[tool multiply] 408" in sample.extra["conversation"][0]
    assert all(name in sample.columns() for name in ("conversation", "first_tool_result"))
    assert any(not torch.equal(p, q) for p, q in zip(policy.trainable_parameters(), before))


def test_an_environment_that_owns_its_reward(tmp_path):
    policy = tiny_policy(chat_tokenizer())
    script_sampler(policy, lambda context: '<tool_call>{"name": "add", "arguments": {"amount": 2}}</tool_call>')
    agent = Agent(environment=Counter, max_turns=4)
    reward = WeightedReward({"alt": (alternating_by_row, 1.0)})
    gen = GenerationConfig(max_new_tokens=96)
    module = GRPOModule(policy, reward, algorithm=GRPOConfig(group_size=2), generation=gen, agent=agent)
    assert reward.names == ["alt", "Counter"]  # the environment's get_reward, weight 1
    trainer = fit(module, {"prompt": ["Count.", "Count."], "target": [4, 5]}, 1, tmp_path)
    assert trainer.callback_metrics["reward/Counter/mean"].item() == 0.5  # 4 reached exactly; 5 passed
    assert trainer.callback_metrics["agent/ended_by/environment"].item() == 1


ESTIMATORS = sorted(name for name in ADV_ESTIMATORS if name not in PER_REWARD)


@pytest.mark.parametrize(
    "setting", [f"adv_estimator={e}" for e in ESTIMATORS] + [f"policy_loss={p}" for p in sorted(POLICY_LOSSES)]
)
def test_every_estimator_and_loss_trains_on_episodes(tmp_path, setting):
    name, value = setting.split("=")
    options = {name: value, "num_iterations": 2, "beta": 0.0, "entropy_coef": 0.0}
    if value == "reinforce_pp":
        options["kl_in_reward"] = False
    policy = tiny_policy(chat_tokenizer())
    script_sampler(policy, multiply_script)
    module = GRPOModule(
        policy,
        WeightedReward({"alt": (alternating_by_row, 1.0)}),
        algorithm=GRPOConfig(group_size=2, **options),
        generation=GenerationConfig(max_new_tokens=96),
        agent=Agent([multiply]),
    )
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    trainer = fit(module, BATCH, 1, tmp_path)
    assert torch.isfinite(trainer.callback_metrics["actor/loss"])
    assert any(not torch.equal(p, q) for p, q in zip(policy.trainable_parameters(), before))


def test_dynamic_sampling_draws_episodes_again(tmp_path):
    policy = tiny_policy(chat_tokenizer())
    script_sampler(policy, multiply_script)

    def constant_for_fives(prompts, completions, **kwargs):
        return [1.0 if "5 *" in p else float(i % 2) for i, p in enumerate(prompts)]

    module = GRPOModule(
        policy,
        WeightedReward({"r": (constant_for_fives, 1.0)}),
        algorithm=GRPOConfig(group_size=2, filter_zero_std_groups=True, max_generation_rounds=2),
        generation=GenerationConfig(max_new_tokens=96),
        agent=Agent([multiply]),
    )
    trainer = fit(module, BATCH, 1, tmp_path)
    assert trainer.callback_metrics["sampling/rounds"].item() == 2
    assert trainer.callback_metrics["agent/turns"].item() == 2


def test_agents_refuse_what_they_cannot_run():
    policy = tiny_policy(chat_tokenizer())
    reward = WeightedReward({"alt": (alternating_by_row, 1.0)})
    with pytest.raises(ConfigError, match="generation.backend=vllm"):
        GRPOModule(policy, reward, generation=GenerationConfig(backend="vllm"), agent=Agent([multiply]))
    with pytest.raises(ConfigError, match="max_staleness"):
        GRPOModule(policy, reward, generation=GenerationConfig(max_staleness=1), agent=Agent([multiply]))
