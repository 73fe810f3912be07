"""The built-in agent experiments through grpo-train, with the shipped warm-start policy: a TRL-style
tool (tool_arithmetic.multiply) and a TRL-style environment class (guessing_game.GuessingGame), as
they are, train; a resumed run matches an uninterrupted one; two processes train together;
and the sampler's log-probs equal the trainer's on real multi-turn episodes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from grpo_lightning.config import ModelConfig, asset_path
from grpo_lightning.data.tasks import guessing_game, tool_arithmetic
from grpo_lightning.policy.agent import Agent
from grpo_lightning.policy.base import SamplingParams
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.run.train import train
from tests.processes import child_env
from tests.run.test_agent_training import assert_resumed_like_uninterrupted, training_rows

SMALL = [
    "data.batch_size=4",
    "data.val_batch_size=8",
    "trainer.limit_val_batches=1",
    "trainer.val_every_n_steps=2",
    "trainer.enable_progress_bar=false",
    "algorithm.group_size=4",
]


@pytest.mark.parametrize("experiment", ["agent_multiply", "agent_guessing"])
def test_the_agent_experiments_train(experiment, compose_config, tmp_path):
    # Groups of 8: a multiply group of the warm start has no reward spread with probability ~0.08
    # (0.29 with 4), and a step needs one group with spread for a gradient.
    train(compose_config(f"experiment={experiment}", *SMALL, "algorithm.group_size=8", "trainer.max_steps=2"))
    rows = training_rows(tmp_path)
    assert sorted(rows) == [1, 2]
    for step in rows.values():
        assert float(step["agent/turns"]) >= 1 and float(step["agent/sampled_tokens"]) > 0
        assert float(step["actor/grad_norm"]) > 0
    if experiment == "agent_guessing":  # every game needs several guesses: several turns, results inserted
        assert all(float(step["agent/inserted_tokens"]) > 0 for step in rows.values())
        assert any(row.get("reward/GuessingGame/mean") for row in rows.values())
        # agent.environment_reward_weight=0 (the preset): the game's reward is logged, the turn rewards trained on
        assert all(step["reward/mean"] == step["reward/turns/mean"] for step in rows.values())


def test_a_resumed_agent_run_matches_the_uninterrupted_one_bitwise(compose_config, tmp_path):
    """With torch's default threads, the lean loop's sampling, tool calls on worker threads and an
    environment per episode."""
    common = ["experiment=agent_guessing", *SMALL, "checkpoint.every_n_steps=2", "generation.val_do_sample=true"]
    train(compose_config(*common, f"output_dir={tmp_path}/full", "trainer.max_steps=4"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=2"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=4", "ckpt_path=last"))
    full = training_rows(tmp_path / "full")
    assert all(float(full[step]["actor/grad_norm"]) > 0 for step in (3, 4)), "the test needs real updates"
    assert_resumed_like_uninterrupted(tmp_path / "full", tmp_path / "part", steps=(3, 4))


@pytest.mark.slow
def test_two_processes_train_an_agent_together(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_lightning.run.train",
            "experiment=agent_multiply",
            "trainer=ddp_cpu",
            *SMALL,
            "data.batch_size=2",
            "trainer.max_steps=2",
            "validate_before_training=false",
            f"output_dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        env=child_env(one_thread=True),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = training_rows(tmp_path / "run")
    assert sorted(rows) == [1, 2] and all(float(row["agent/turns"]) >= 1 for row in rows.values())


@pytest.mark.parametrize("task", ["multiply", "guessing"])
def test_sampler_and_trainer_log_probs_agree_on_real_episodes(task):
    """The shipped policy sampling with the lean loop, tool results inserted between its turns: the
    trainer's log-probs of the sampled tokens are the sampler's."""
    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=asset_path("agent-policy")))
    if task == "multiply":
        agent = Agent([tool_arithmetic.multiply], max_turns=3)
        rows = tool_arithmetic.load_splits(num_train=8, num_val=1)[0]
    else:
        agent = Agent(environment=guessing_game.GuessingGame, max_turns=6)
        rows = guessing_game.load_splits(num_train=8, num_val=1)[0]
    batch = {key: [row[key] for row in rows] for key in rows[0]}
    torch.manual_seed(0)
    sampling = SamplingParams(max_new_tokens=48, record_logprobs=True)  # a multiply call is 34 tokens
    rollout = agent.rollout(policy, batch, "prompt", 4, sampling)
    tokens = rollout.tokens
    multi_turn = (tokens.completion_present - tokens.completion_mask).sum(dim=1) > 0  # [B] tool results inserted
    assert multi_turn.any(), "the test needs episodes with more than one turn"
    logprobs, _ = policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=False)
    sampled = tokens.completion_mask.bool()
    torch.testing.assert_close(logprobs[sampled], rollout.sampling_logprobs[sampled], atol=1e-4, rtol=0)


def test_episodes_with_transformers_generate():
    """The other local backend (generation.backend=hf): the same episodes' structure, no sampler log-probs."""
    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=asset_path("agent-policy")))
    rows = guessing_game.load_splits(num_train=4, num_val=1)[0]
    batch = {key: [row[key] for row in rows] for key in rows[0]}
    torch.manual_seed(0)
    rollout = Agent(environment=guessing_game.GuessingGame, max_turns=6).rollout(
        policy, batch, "prompt", 2, SamplingParams(max_new_tokens=32, backend="hf")
    )
    tokens = rollout.tokens
    assert rollout.sampling_logprobs is None
    assert max(episode.turns for episode in rollout.episodes) > 1
    for row, episode in enumerate(rollout.episodes):
        assert int(tokens.completion_mask[row].sum()) == episode.sampled_tokens
        assert int((tokens.completion_present[row] - tokens.completion_mask[row]).sum()) == episode.inserted_tokens
