"""A torchmetrics metric for one stage: named weighted means, synced across processes on compute.

One GRPO training step spans several micro-batches (num_iterations x mini-batches), so each
statistic is averaged over all of them, weighted by their size, rather than reporting the last
micro-batch's value. :class:`StageMeans` is reset at the start of each training step and
computed once at its end; for validation it accumulates over the whole validation run.

All of a stage's means live in two vectors (weighted sums and weights, one slot per name), so
an update is a few small tensor ops with no host sync, and ``compute`` reduces them across
processes in two all-reduces, not two per metric. A non-finite value is an error, raised at
``compute`` with the metric's name (checking at each update would sync the device each time).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from grpo_lightning.algo.advantages import constant_groups
from grpo_lightning.algo.correction import CORRECTION_METRICS
from grpo_lightning.distributed import is_distributed, per_process
from grpo_lightning.policy.agent.episodes import ENDINGS
from grpo_lightning.policy.agent.tools import TOOL_ERROR_KINDS
from grpo_lightning.rewards.composite import RewardError
from grpo_lightning.types import Episode, Experience, RewardScores


class StageMeans(Metric):
    """Weighted means of a fixed set of named statistics.

    The names are declared up front so every process holds the same slots (required for the
    cross-process sum in ``compute``).
    """

    full_state_update = False
    sums: Tensor
    weights: Tensor

    def __init__(self, names: list[str], prefix: str = ""):
        super().__init__()
        self.names = list(names)
        self.prefix = prefix  # of the stage's own names (validation: "val/")
        self._slot = {name: slot for slot, name in enumerate(self.names)}
        self.add_state("sums", default=torch.zeros(len(self.names)), dist_reduce_fx="sum")
        self.add_state("weights", default=torch.zeros(len(self.names)), dist_reduce_fx="sum")

    def update(self, values: dict[str, Tensor | float], weight: float | Tensor = 1.0) -> None:
        """Add each value (a number, or a tensor whose elements all count) with ``weight`` per element."""
        for name, value in values.items():
            slot = self._slot.get(name)
            if slot is None:
                raise KeyError(f"metric {name!r} was not declared; declared: {self.names}")
            value = torch.as_tensor(value, dtype=torch.float32, device=self.sums.device)
            weights = torch.as_tensor(weight, dtype=torch.float32, device=self.sums.device).expand_as(value)
            self.sums[slot] += (value * weights).sum()
            self.weights[slot] += weights.sum()

    def compute(self) -> dict[str, Tensor]:
        """Means of the statistics that received at least one value."""
        means = self.sums / self.weights.clamp(min=torch.finfo(torch.float32).tiny)  # [M]
        received, finite = torch.stack([self.weights > 0, means.isfinite()]).tolist()  # one host sync
        broken = [name for name, seen, ok in zip(self.names, received, finite) if seen and not ok]
        if broken:
            raise RuntimeError(
                f"non-finite values were logged for {broken}: a NaN or inf reached the "
                "metrics (the loss guard skips such updates; this is a bug worth reporting)"
            )
        return {name: means[slot] for slot, (name, seen) in enumerate(zip(self.names, received)) if seen}


LOSS_TERMS = ("actor/loss", "actor/policy_loss", "actor/kl_penalty")
"""Logged means weighted by the loss aggregation's units (sequences or tokens); the other actor
statistics are token means, weighted by token counts across micro-batches."""


def train_metric_names(
    loss_stats: list[str], reward_names: list[str], alg: Any, non_finite_counted: bool, max_staleness: int = 0
) -> list[str]:
    """Every metric a training step logs, declared up front (a StageMeans has fixed slots): the policy
    loss's ``loss_stats``, the reward functions', and what the algorithm settings ``alg`` (GRPOConfig's
    fields) switch on."""
    kl, overlong, dynamic_sampling = alg.beta > 0, alg.overlong_buffer_frac is not None, alg.filter_zero_std_groups
    actor = [f"actor/{name}" for name in loss_stats] + ["actor/entropy"]
    actor += ["actor/grpo_kl", "actor/kl_penalty"] if kl else []
    actor += ["actor/entropy_coef"] if alg.target_entropy is not None else []
    actor += ["actor/loss", "actor/adv_mean", "actor/adv_std", "actor/grad_norm", "actor/lr", "actor/skipped_updates"]
    reward = ["reward/mean", "reward/std", "reward/frac_zero_std"] + [f"reward/{n}/mean" for n in reward_names]
    reward += ["reward/overlong_penalty"] if overlong else []
    reward += ["sampling/rounds", "sampling/kept_group_frac"] if dynamic_sampling else []
    reward += [f"reward/{n}/non_finite" for n in reward_names] if non_finite_counted else []
    reward += list(CORRECTION_METRICS) if alg.rollout_correction is not None else []
    reward += ["rollout/staleness"] if max_staleness > 0 else []
    return (
        actor + reward + ["response_length/mean", "response_length/clip_ratio", "perf/step_time_s", "perf/tokens_per_s"]
    )


AGENT_METRICS = (
    ["agent/turns", "agent/tool_calls", "agent/sampled_tokens", "agent/inserted_tokens", "agent/ended_by_limit"]
    + [f"agent/tool_errors/{kind}" for kind in TOOL_ERROR_KINDS]
    + [f"agent/ended_by/{why}" for why in ENDINGS]
)
"""Declared with an agent (policy/agent): per episode, means over a step's episodes; tool errors are
counts per episode by kind, ended_by/<why> the fraction of episodes that ended so."""


def agent_means(episodes: list[Episode], prefix: str = "") -> dict[str, Tensor]:
    """A batch of episodes' statistics, one value per episode for each name (means over episodes),
    each name after ``prefix`` (validation's ``val/``)."""

    def per_episode(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32)

    means = {
        "agent/turns": per_episode([e.turns for e in episodes]),
        "agent/tool_calls": per_episode([e.tool_calls for e in episodes]),
        "agent/sampled_tokens": per_episode([e.sampled_tokens for e in episodes]),
        "agent/inserted_tokens": per_episode([e.inserted_tokens for e in episodes]),
        "agent/ended_by_limit": per_episode([e.ended_by not in ("answer", "environment") for e in episodes]),
    }
    means |= {
        f"agent/tool_errors/{kind}": per_episode([e.tool_errors.get(kind, 0) for e in episodes])
        for kind in TOOL_ERROR_KINDS
    }
    means |= {f"agent/ended_by/{why}": per_episode([e.ended_by == why for e in episodes]) for why in ENDINGS}
    return {prefix + name: values for name, values in means.items()}


def logged_metric_means(logged: list[dict[str, float]], declared: set[str]) -> dict[str, Tensor]:
    """The means of what reward functions logged with ``log_metric`` in one step (each call's
    values already averaged), over the step's calls and every process (TRL averages per logging
    step across processes). A name that is one of our own metrics is refused."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for process_logs in per_process(logged) if is_distributed() else [logged]:
        for call in process_logs:
            for name, value in call.items():
                sums[name] = sums.get(name, 0.0) + float(value)
                counts[name] = counts.get(name, 0) + 1
    clash = sorted(set(sums) & declared)
    if clash:
        raise RewardError(
            f"a reward function logged {clash} with log_metric, which are names of our own metrics; log under "
            "another name"
        )
    return {name: torch.tensor(sums[name] / counts[name]) for name in sorted(sums)}


def experience_means(experience: Experience, advantages: Tensor) -> list[tuple[dict[str, Tensor], float]]:
    """A step's reward, advantage and length statistics, each with its weight per element in the
    step's means."""
    rewards, size = experience.rewards, experience.rewards.numel()
    zero_std = constant_groups(rewards, experience.group_size).float()  # [N]
    if advantages.dim() == 2:  # token-level: over completion tokens, not padding
        advantages = advantages[experience.tokens.completion_mask.bool()]
    means = [
        ({"reward/mean": rewards.mean(), "reward/std": rewards.std(unbiased=False)}, size),
        ({"response_length/mean": experience.lengths.float().mean()}, size),
        ({"actor/adv_mean": advantages.mean(), "actor/adv_std": advantages.std(unbiased=False)}, size),
        ({"reward/frac_zero_std": zero_std.mean()}, zero_std.numel()),
    ]
    if experience.truncated is not None:
        means.append(({"response_length/clip_ratio": experience.truncated.float().mean()}, size))
    scores = experience.scores
    if scores is not None:
        means += [
            ({f"reward/{n}/mean": values[scores.applicable[n]]}, 1.0) for n, values in scores.per_function.items()
        ]
        means += [({f"reward/{n}/non_finite": count}, 1.0) for n, count in scores.non_finite.items()]
    return means


def micro_batch_means(
    stats: dict[str, Tensor], units: Tensor, tokens: Tensor
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """A micro-batch's loss statistics (``actor/`` names) with their weights: the loss terms by the
    loss aggregation's ``units`` (sequences or tokens), the diagnostics by ``tokens``. A micro-batch
    with nothing to average over (all masked) still reports its 0s, with a weight too small to move
    the others."""
    loss_terms = ({k: v for k, v in stats.items() if k in LOSS_TERMS}, units.clamp(min=1e-6))
    return [loss_terms, ({k: v for k, v in stats.items() if k not in LOSS_TERMS}, tokens.clamp(min=1e-6))]


def val_metric_names(reward_names: list[str], pass_metric: str | None) -> list[str]:
    """Every metric a validation logs."""
    return ["val/reward/mean"] + [f"val/reward/{n}/mean" for n in reward_names] + ([pass_metric] if pass_metric else [])


def validation_means(scores: RewardScores) -> dict[str, Tensor]:
    """A validation batch's rewards: the total, and each function's where it applied."""
    per_function = {f"val/reward/{n}/mean": values[scores.applicable[n]] for n, values in scores.per_function.items()}
    return {"val/reward/mean": scores.total} | per_function
