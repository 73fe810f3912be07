"""The data that flows between the layers: token batches, rollouts, reward scores, experience.

A leaf module: it imports nothing of grpo_lightning, so every layer can use it and no two
layers import each other for their common types. Shapes: B rows (completions, G consecutive
rows per prompt), P prompt tokens, T completion tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from torch import Tensor


@dataclass
class TokenBatch:
    """The tensors one forward pass needs; every field has the batch as its first dimension."""

    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P]
    completion_ids: Tensor  # [B, T] right-padded
    completion_mask: Tensor  # [B, T] 1 on the tokens the policy sampled, up to and including EOS
    # [B, T] 1 on every token of the sequence: sampled, or inserted between an agent's turns (tool
    # results, observations, the chat template's glue), which the model reads but is not trained on;
    # None: the same as completion_mask (single-turn).
    completion_attention_mask: Optional[Tensor] = None

    @property
    def completion_present(self) -> Tensor:
        """[B, T] the mask the model attends with: every token in the sequence."""
        return self.completion_mask if self.completion_attention_mask is None else self.completion_attention_mask

    def rows(self, index: Tensor) -> "TokenBatch":
        """The rows ``index`` of every tensor field."""
        return replace(
            self,
            **{f.name: getattr(self, f.name)[index] for f in fields(self) if isinstance(getattr(self, f.name), Tensor)},
        )


@dataclass
class UpdateBatch(TokenBatch):
    """A scored rollout, ready for the policy update."""

    advantages: Optional[Tensor] = None  # [B] or [B, T]
    old_logprobs: Optional[Tensor] = None  # [B, T]; None: the current log-probs, detached
    ref_logprobs: Optional[Tensor] = None  # [B, T]; None: no KL term


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands, as reward functions receive it (``trainer_state``, after TRL's
    TrainerState: the same attribute names)."""

    global_step: int  # training steps completed
    max_steps: int  # training steps the run makes; -1 where unknown
    epoch: int  # passes over the prompts begun


@dataclass
class Episode:
    """One agent episode (policy/agent): the whole conversation and what happened in it."""

    messages: list[dict[str, Any]]  # the prompt's messages, then each assistant turn, tool result, ...
    turns: int = 0  # assistant turns sampled
    tool_calls: int = 0  # calls the model asked for (run or refused)
    tool_errors: dict[str, int] = field(default_factory=dict)  # kind -> count (policy/agent/tools.py)
    ended_by: str = "answer"  # why it stopped: an answer without a tool call, the environment, or a limit
    sampled_tokens: int = 0  # tokens the policy sampled (trained on)
    inserted_tokens: int = 0  # tokens put between its turns (not trained on)
    environment: Any = None  # the episode's environment instance, if any

    @property
    def final_answer(self) -> str:
        """The content of the last assistant turn."""
        return next((m.get("content") or "" for m in reversed(self.messages) if m["role"] == "assistant"), "")

    def transcript(self) -> str:
        """The conversation as text, one block per message, tool calls and results shown."""
        blocks = []
        for message in self.messages:
            text = message.get("content") or ""
            for call in message.get("tool_calls") or []:
                function = call.get("function", call)
                text += f"\n-> {function['name']}({json.dumps(function.get('arguments', {}))})"
            name = f" {message['name']}" if message["role"] == "tool" and message.get("name") else ""
            blocks.append(f"[{message['role']}{name}] {text.strip()}")
        return "\n".join(blocks)


@dataclass
class Rollout:
    """Sampled completions with the text and columns the reward functions see."""

    tokens: TokenBatch
    prompts: list[str]  # [B] the prompt of each row (repeated G times)
    completions: list[str]  # [B]
    columns: dict[str, list[Any]]  # each [B], the dataset's other columns, repeated like prompts
    group_ids: Tensor  # [B] index of the prompt within the batch
    truncated: Tensor  # [B] bool: hit max_new_tokens before EOS
    sampling_logprobs: Optional[Tensor] = None  # [B, T] the sampler's own, where it kept them
    episodes: Optional[list[Episode]] = None  # [B] agent rollouts: each row's conversation

    @property
    def lengths(self) -> Tensor:
        return self.tokens.completion_mask.sum(dim=1)  # [B]


@dataclass
class RewardScores:
    """Rewards of one batch of completions."""

    total: Tensor  # [B] weighted sum, None counted as 0
    per_function: dict[str, Tensor]  # name -> [B] raw values (0 where not applicable)
    applicable: dict[str, Tensor]  # name -> [B] bool, False where the function returned None
    non_finite: dict[str, int] = field(default_factory=dict)  # name -> NaN/inf values scored 0
    unshaped: Optional[Tensor] = None  # [B] total before reward shaping (overlong penalty); None: unshaped
    weights: dict[str, float] = field(default_factory=dict)  # name -> weight in the total
    # What the functions logged in this call (TRL's log_metric / log_extra keyword arguments):
    logged_metrics: dict[str, float] = field(default_factory=dict)  # metric -> mean of the values logged
    extra_columns: dict[str, list[Any]] = field(default_factory=dict)  # column -> [B] values for the completions table
    # Agents' turn rewards (rewards/__init__.py): [B] the weighted reward of each assistant turn, the
    # episode's other rewards on its last turn, each row summing to its total; None: outcome rewards only.
    turn_rewards: Optional[list[Optional[list[float]]]] = None

    def with_penalty(self, penalty: Tensor) -> "RewardScores":
        """These scores with ``penalty`` [B] added to each total (a reward shaping; on the last turn
        where there are turn rewards), the total before it kept as ``unshaped``."""
        turns = self.turn_rewards
        if turns is not None:
            turns = [None if t is None else [*t[:-1], t[-1] + float(p)] for t, p in zip(turns, penalty.tolist())]
        return replace(self, total=self.total + penalty, unshaped=self.total, turn_rewards=turns)


@dataclass
class Experience:
    tokens: TokenBatch
    rewards: Tensor  # [B] outcome reward of each completion
    group_ids: Tensor  # [B] prompt index, consecutive groups
    group_size: int
    token_rewards: Optional[Tensor] = None  # [B, T] process rewards, or None
    token_reward_mask: Optional[Tensor] = None  # [B, T] bool where steps end, or None: algo.advantages' default
    truncated: Optional[Tensor] = None  # [B] bool, or None when unknown
    scores: Optional[RewardScores] = None  # per-function rewards (generated rollouts only)
    sampling_logprobs: Optional[Tensor] = None  # [B, T], or None: recompute when needed
    ref_logprobs: Optional[Tensor] = None  # [B, T], or None: compute when beta > 0
    prompts: Optional[list[str]] = None  # [B] texts (generated rollouts only)
    completions: Optional[list[str]] = None  # [B]
    episodes: Optional[list[Episode]] = None  # [B] agent rollouts' conversations

    @property
    def lengths(self) -> Tensor:
        return self.tokens.completion_mask.sum(dim=1)  # [B]


def experience_from_rollout(rollout: Rollout, scores: RewardScores, group_size: int) -> Experience:
    return Experience(
        tokens=rollout.tokens,
        rewards=scores.total,
        group_ids=rollout.group_ids,
        group_size=group_size,
        truncated=rollout.truncated,
        scores=scores,
        sampling_logprobs=rollout.sampling_logprobs,
        prompts=rollout.prompts,
        completions=rollout.completions,
        episodes=rollout.episodes,
    )


def per_completion_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] as given, or [B, T] per-token advantages as each completion's mean over its tokens."""
    if advantages.dim() == 1:
        return advantages
    mask = mask.to(advantages.dtype)
    return (advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@dataclass
class RolloutSample:
    """One training step's completions, as the reward functions and the estimator saw them."""

    prompts: list[str]  # [B] one per completion (each prompt repeated G times)
    completions: list[str]  # [B]
    rewards: dict[str, Tensor]  # name -> [B] raw values
    applicable: dict[str, Tensor]  # name -> [B] bool, False where the function returned None
    total: Tensor  # [B] weighted sum
    advantages: Tensor  # [B]; a completion's token mean where advantages are per token
    lengths: Tensor  # [B] completion tokens
    # More columns, [B] each: an agent's conversations and their course, and what reward functions
    # added with log_extra.
    extra: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_experience(cls, experience: Experience, advantages: Tensor) -> RolloutSample:
        """The sample of generated, scored ``experience`` (its ``scores`` are set)."""
        scores = experience.scores
        extra: dict[str, list[Any]] = {}
        if experience.episodes is not None:
            episodes = experience.episodes
            extra = {
                "conversation": [episode.transcript() for episode in episodes],
                "turns": [episode.turns for episode in episodes],
                "tool_calls": [episode.tool_calls for episode in episodes],
                "ended_by": [episode.ended_by for episode in episodes],
            }
        return cls(
            experience.prompts,
            experience.completions,
            scores.per_function,
            scores.applicable,
            experience.rewards,
            per_completion_advantages(advantages, experience.tokens.completion_mask),
            experience.lengths,
            extra | scores.extra_columns,
        )

    def columns(self) -> list[str]:
        rewards = (f"reward/{name}" for name in self.rewards)
        return ["prompt", "completion", *rewards, "reward", "advantage", "length", *self.extra]

    def rows(self) -> list[list[Any]]:
        """Table rows; a reward that did not apply to a completion is None, not 0."""
        per_function = [
            [value if ok else None for value, ok in zip(values.tolist(), self.applicable[name].tolist())]
            for name, values in self.rewards.items()
        ]
        columns = [
            self.prompts,
            self.completions,
            *per_function,
            self.total.tolist(),
            self.advantages.tolist(),
            self.lengths.tolist(),
            *self.extra.values(),
        ]
        return [list(row) for row in zip(*columns)]
