"""Agents in the training step: GRPOModule on multi-turn episodes, with a scripted sampler
(tests/policy/agent_fixtures.py) so that each episode's course, and each reward, is known."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grpo_lightning.algo.advantages import ADV_ESTIMATORS, PER_REWARD
from grpo_lightning.algo.losses import POLICY_LOSSES
from grpo_lightning.config import ConfigError, GenerationConfig, GRPOConfig
from grpo_lightning.module import GRPOModule
from grpo_lightning.policy.agent import Agent
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.rewards import WeightedReward
from grpo_lightning.run.train import train
from tests.policy.agent_fixtures import chat_tokenizer, script_sampler, scripted_sample, tiny_policy
from tests.policy.test_agent import Counter, multiply, multiply_script
from tests.processes import child_env

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
    assert all(len(row) == len(sample.columns()) for row in sample.rows())
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


def test_an_environment_reward_can_be_logged_without_training_on_it(tmp_path):
    policy = tiny_policy(chat_tokenizer())
    script_sampler(policy, lambda context: '<tool_call>{"name": "add", "arguments": {"amount": 2}}</tool_call>')
    agent = Agent(environment=Counter, max_turns=4, environment_reward_weight=0.0)
    reward = WeightedReward({"alt": (alternating_by_row, 1.0)})
    gen = GenerationConfig(max_new_tokens=96)
    module = GRPOModule(policy, reward, algorithm=GRPOConfig(group_size=2), generation=gen, agent=agent)
    assert reward.functions["Counter"][1] == 0.0
    trainer = fit(module, {"prompt": ["Count.", "Count."], "target": [4, 5]}, 1, tmp_path)
    assert trainer.callback_metrics["reward/Counter/mean"].item() == 0.5  # logged
    assert trainer.callback_metrics["reward/mean"].item() == 0.5  # alt's 1, 0, 1, 0 only


def test_turn_rewards_credit_each_turn_with_what_follows_it(tmp_path, monkeypatch):
    policy = tiny_policy(chat_tokenizer())
    script_sampler(policy, lambda context: '<tool_call>{"name": "add", "arguments": {"amount": 2}}</tool_call>')

    def first_turn_of_even_rows(conversations, **kwargs):
        turns = [sum(message["role"] == "assistant" for message in messages) for messages in conversations]
        return [[float(row % 2 == 0 and turn == 0) for turn in range(count)] for row, count in enumerate(turns)]

    reward = WeightedReward({"first": (first_turn_of_even_rows, 1.0)})
    algorithm = GRPOConfig(group_size=2, scale_rewards="none", beta=0.0, entropy_coef=0.0)
    generation = GenerationConfig(max_new_tokens=96)
    module = GRPOModule(policy, reward, algorithm=algorithm, generation=generation, agent=Agent(environment=Counter))
    updates = []
    prepare = GRPOModule._prepare_update
    monkeypatch.setattr(GRPOModule, "_prepare_update", lambda self, e: updates.append(prepare(self, e)) or updates[-1])
    trainer = fit(module, {"prompt": ["Count."], "target": [4]}, 1, tmp_path)
    # Two turns each (2 + 2 = 4 ends it); Counter's own reward, 1, sits on the last turn: turns
    # [1, 1] and [0, 1], mean 0.75, so row 0's turns are credited 0.25 + 0.25 and 0.25, row 1's
    # -0.75 + 0.25 and 0.25: the second turn does not answer for the first.
    assert trainer.callback_metrics["reward/mean"].item() == 1.5
    update = updates[0]
    sampled = update.completion_mask.bool()
    first_turn = sampled & (sampled.long().cumsum(dim=1) <= sampled.sum(dim=1, keepdim=True) // 2)
    assert update.advantages.shape == sampled.shape
    expected = torch.where(first_turn, torch.tensor([[0.5], [-0.5]]), torch.tensor([[0.25], [0.25]]))
    torch.testing.assert_close(update.advantages[sampled], expected[sampled])


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


def coin_flip_script(context: str) -> str:
    """Call multiply (or answer its result), or guess: decided by torch's random stream, which a
    resumed run must have restored for its episodes to come out the same."""
    if "<tool_response>" in context and torch.rand(()) < 0.7:
        return multiply_script(context)
    if torch.rand(()) < 0.6:
        return multiply_script(context)
    return str(int(torch.randint(100, 10000, ())))


def agent_run_settings(tmp_path) -> list[str]:
    """grpo-train settings of an agent run on a tiny random chat model saved under ``tmp_path``, with
    JSONL questions; the sampler is scripted separately (coin_flip_script)."""
    model_dir = tmp_path / "model"
    policy = tiny_policy(chat_tokenizer())
    policy.model.save_pretrained(model_dir)
    policy.tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": f"What is {a} * {a + 3}?", "answer": str(a * (a + 3))} for a in range(11, 27)]
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [
        "model=hf",
        f"model.name_or_path={model_dir}",
        "data=jsonl",
        f"data.path={data}",
        "data.apply_chat_template=true",
        "reward=final_number",
        "agent.tools=[tests.policy.test_agent.multiply]",
        "generation.max_new_tokens=96",
        "algorithm.group_size=4",
        "algorithm.mini_batch_size=8",
        "algorithm.beta=0.04",
        "data.batch_size=4",
        "trainer.val_every_n_steps=2",
        "checkpoint.every_n_steps=2",
        "optim.lr=1e-3",
    ]


def sample_by_coin_flips(self, *args):
    return scripted_sample(self, *args, script=coin_flip_script)


def training_rows(run_dir) -> dict[int, dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("actor/loss")]
    return {int(row["step"]): {k: v for k, v in row.items() if not k.startswith("perf/")} for row in logged}


def test_a_resumed_agent_run_matches_the_uninterrupted_one_bitwise(compose_config, tmp_path, monkeypatch):
    """Through grpo-train's train(), with torch's default threads and tool calls on worker threads.
    The tools' schema makes prompts long enough that torch splits the sum of a shared prompt's
    gradients across threads: policy/scoring/rows.py keeps its order fixed."""
    monkeypatch.setattr(CausalLMPolicy, "sample_with_logprobs", sample_by_coin_flips)
    common = agent_run_settings(tmp_path)
    train(compose_config(*common, f"output_dir={tmp_path}/full", "trainer.max_steps=4"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=2"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=4", "ckpt_path=last"))
    full = training_rows(tmp_path / "full")
    assert all(float(full[step]["actor/grad_norm"]) > 0 for step in (3, 4)), "the test needs real updates"
    assert all(0 < float(full[step]["agent/inserted_tokens"]) for step in (3, 4)), "the test needs tool results"
    assert len({full[step]["reward/mean"] for step in (1, 2, 3, 4)}) > 1, "the episodes must depend on the stream"
    assert_resumed_like_uninterrupted(tmp_path / "full", tmp_path / "part", steps=(3, 4))


def assert_resumed_like_uninterrupted(full_dir: Path, resumed_dir: Path, steps: tuple[int, ...]) -> None:
    """The resumed run's ``steps`` logged exactly what the uninterrupted run's did, and its last
    weights are bitwise the same."""
    full, resumed = training_rows(full_dir), training_rows(resumed_dir)
    for step in steps:
        assert resumed[step] == full[step], f"step {step} differs after resume"
    weights = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for d in (full_dir, resumed_dir)
    ]
    assert weights[0].keys() == weights[1].keys()
    for name, weight in weights[0].items():
        assert torch.equal(weights[1][name], weight), name


SCRIPTED_AGENT_RUN = """
import sys
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.run.train import load_config, train
from tests.run.test_agent_training import sample_by_coin_flips

CausalLMPolicy.sample_with_logprobs = sample_by_coin_flips
train(load_config(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_train_an_agent(tmp_path):
    """trainer=ddp_cpu: each process runs its own episodes; the gradients are averaged."""
    script = tmp_path / "scripted_agent_run.py"
    script.write_text(SCRIPTED_AGENT_RUN)
    settings = agent_run_settings(tmp_path) + ["trainer=ddp_cpu", "trainer.max_steps=2", "data.batch_size=2"]
    settings += ["validate_before_training=false", "trainer.limit_val_batches=0"]  # 16 rows: too few to split
    done = subprocess.run(
        [sys.executable, str(script), *settings, f"output_dir={tmp_path}/run", "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
        env=child_env(one_thread=True),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = training_rows(tmp_path / "run")
    assert sorted(rows) == [1, 2]
    assert all(float(row["agent/turns"]) > 1 and float(row["actor/grad_norm"]) > 0 for row in rows.values())
