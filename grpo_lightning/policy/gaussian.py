"""A Gaussian policy for continuous actions: a ~ N(mu(x), diag(sigma^2)).

The mean is a small MLP of the observation x, the log standard deviation a learned vector of
its own (state-independent, as in PPO's continuous-control policies). One action is one
element: its log-probability sums over the action's dimensions, so ``completion_mask`` is
[B, 1]. ``generation.temperature`` scales sigma when sampling and scoring alike (the log-probs
are those of the distribution sampled from); greedy sampling (``do_sample=False``, validation
with ``generation.val_do_sample=false``) takes the mean. The entropy is the Gaussian's own,
sum_d (1/2) log(2 pi e sigma_d^2), so ``algorithm.entropy_coef`` rewards a wider sigma.

Observations come as the prompts of the data rows (lists of floats, e.g.
``data/tasks/bandit.py``); the completions the rewards see are the actions as lists of floats.

    policy = GaussianPolicy(observation_dim=2, action_dim=2)
    Trainer(max_steps=100).fit(GRPOModule(policy, reward), datamodule=PromptDataModule(rows, ...))
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from grpo_lightning.config import ConfigError
from grpo_lightning.policy.base import GenerativePolicy, SamplingParams, grouped_rollout
from grpo_lightning.types import Rollout, TokenBatch

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def gaussian_log_prob(actions: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(a; mean, diag(std^2)) summed over the last dimension.  [..., D] -> [...]"""
    return (-((actions - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(dim=-1)


def gaussian_entropy(std: Tensor) -> Tensor:
    """Entropy of diag(std^2), sum_d (1/2) log(2 pi e std_d^2).  [..., D] -> [...]"""
    return (std.log() + 0.5 * math.log(2 * math.pi * math.e)).sum(dim=-1)


class GaussianPolicy(GenerativePolicy):
    """A ~ N(MLP(x), diag(exp(log_std))^2), for any observation and action dimension."""

    def __init__(self, observation_dim: int, action_dim: int, hidden_size: int = 64, init_log_std: float = 0.0):
        super().__init__()
        if min(observation_dim, action_dim, hidden_size) < 1:
            raise ConfigError(
                f"GaussianPolicy needs positive sizes; got observation_dim={observation_dim}, "
                f"action_dim={action_dim}, hidden_size={hidden_size}"
            )
        self.config = dict(
            observation_dim=observation_dim, action_dim=action_dim, hidden_size=hidden_size, init_log_std=init_log_std
        )
        self.mean = nn.Sequential(
            nn.Linear(observation_dim, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, action_dim),
        )
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.reference: Optional[nn.ModuleDict] = None

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "GaussianPolicy":
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{directory} holds no Gaussian policy ({CONFIG_FILE} and {WEIGHTS_FILE})")
        policy = cls(**json.loads((directory / CONFIG_FILE).read_text()))
        policy.load_state_dict(load_file(directory / WEIGHTS_FILE))
        return policy

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config, indent=2))
        weights = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("reference.")}
        save_file(weights, directory / WEIGHTS_FILE)

    def distribution(self, observations: Tensor, reference: bool = False) -> tuple[Tensor, Tensor]:
        """Mean [B, D] and std [D] of the policy (or of its frozen reference)."""
        if reference:
            if self.reference is None:
                raise RuntimeError("no reference policy: call enable_reference() first (algorithm.beta > 0 does)")
            return self.reference["mean"](observations), self.reference["log_std"].value.exp()
        return self.mean(observations), self.log_std.exp()

    def _observations(self, prompts: list[Any]) -> Tensor:
        device = self.log_std.device
        try:
            observations = torch.as_tensor(prompts, dtype=torch.float32, device=device)  # [N, D]
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"GaussianPolicy takes prompts that are observation vectors (lists of numbers); got {prompts[:1]!r} "
                f"({error})"
            ) from None
        if observations.dim() != 2 or observations.size(1) != self.config["observation_dim"]:
            raise ConfigError(
                f"GaussianPolicy(observation_dim={self.config['observation_dim']}) got observations of shape "
                f"{tuple(observations.shape)}; each prompt must be a list of {self.config['observation_dim']} numbers"
            )
        return observations

    @torch.no_grad()
    def rollout(
        self, prompts: list[Any], columns: dict[str, list[Any]], group_size: int, sampling: SamplingParams
    ) -> Rollout:
        observations = self._observations(prompts).repeat_interleave(group_size, dim=0)  # [N*G, D_obs]
        mean, std = self.distribution(observations)
        actions = mean + std * sampling.temperature * torch.randn_like(mean) if sampling.do_sample else mean
        ones = torch.ones(observations.size(0), 1, dtype=torch.long, device=observations.device)
        tokens = TokenBatch(observations, ones, actions, ones)  # one element per action
        return grouped_rollout(tokens, prompts, columns, group_size, actions.tolist())

    def logprobs_and_entropy(
        self,
        batch: TokenBatch,
        *,
        temperature: float,
        with_entropy: bool,
        reference: bool = False,
        entropy_grad: bool = True,
    ) -> tuple[Tensor, Optional[Tensor]]:
        mean, std = self.distribution(batch.prompt_ids.float(), reference)
        std = std * temperature
        logprobs = gaussian_log_prob(batch.completion_ids.float(), mean, std).unsqueeze(1)  # [B, 1]
        if not with_entropy:
            return logprobs, None
        entropy = gaussian_entropy(std).expand_as(logprobs)  # [B, 1]
        return logprobs, entropy if entropy_grad else entropy.detach()

    def enable_reference(self) -> None:
        if self.reference is None:
            frozen = nn.ModuleDict({"mean": copy.deepcopy(self.mean), "log_std": _Frozen(self.log_std.detach())})
            frozen.requires_grad_(False)
            self.reference = frozen

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.mean.parameters()
        yield self.log_std

    def reference_pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.reference is None:
            raise RuntimeError("no reference policy: call enable_reference() first (algorithm.beta > 0 does)")
        yield from zip(self.reference["mean"].parameters(), self.mean.parameters())
        yield self.reference["log_std"].value, self.log_std


class _Frozen(nn.Module):
    """A tensor kept as a buffer, so the reference's log_std is in the state dict but never trained."""

    def __init__(self, value: Tensor):
        super().__init__()
        self.register_buffer("value", value.clone())


def build_gaussian_policy(name_or_path: Optional[str] = None, **kwargs: Any) -> GaussianPolicy:
    """``model.builder`` for a Gaussian policy: loaded from ``model.name_or_path`` (a directory a run
    exported as ``policy/``) or, with ``model.name_or_path=null``, built new from
    ``model.builder_kwargs`` (observation_dim, action_dim, hidden_size, init_log_std)."""
    if name_or_path is not None:
        if kwargs:
            raise ConfigError(
                f"model.builder_kwargs {sorted(kwargs)} would be ignored: the policy is loaded from "
                f"model.name_or_path={name_or_path}; drop them, or set model.name_or_path=null to build a new one"
            )
        return GaussianPolicy.from_pretrained(name_or_path)
    try:
        return GaussianPolicy(**kwargs)
    except TypeError as error:
        raise ConfigError(f"model.builder_kwargs do not fit GaussianPolicy: {error}") from None
