"""A denoising diffusion model as a GRPO policy: each denoising step is an action.

DDPM (Ho et al. 2020, arXiv:2006.11239) samples an image by K reverse steps from x_K ~ N(0, I):

    x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I),
    mu_theta = (x_t - beta_t / sqrt(1 - alphabar_t) * eps_theta(x_t, t)) / sqrt(alpha_t),
    sigma_t^2 = beta_t                                      (DDPM's first choice of variance).

Each step is a Gaussian, so the sampler is already the stochastic policy that Flow-GRPO (Liu et
al. 2025, arXiv:2505.05470) and DanceGRPO (Xue et al. 2025, arXiv:2505.07818) make of flow
models with an SDE step: a step's log-probability log N(x_{t-1}; mu_theta(x_t, t), sigma_t^2 I)
has a gradient in theta, the G samples of a group share their condition (here: none, the model is
unconditional) and the reward judges the final image x_0. The rollout keeps the whole trajectory
[B, K + 1, D] as its "completion"; ``completion_mask`` is [B, K], one element per step, so the
loss aggregations read "per step" where they say "per token". ``generation.temperature`` scales
every sigma_t (sampling and scoring alike); greedy sampling takes the mean at every step. The
entropy of a step is the Gaussian's, (D / 2) log(2 pi e sigma_t^2): logged, and constant in theta.

Departures from the papers: DDPM rather than a flow model with an SDE sampler; the KL to the
reference (``algorithm.beta``) is the sampled per-step estimator of algo/kl.py, where Flow-GRPO
uses the closed form ||mu - mu_ref||^2 / (2 sigma_t^2).

The shipped model (``grpo_lightning/assets/digits-diffusion``) is pre-trained on scikit-learn's
8x8 digits by ``scripts/make_digits_diffusion.py``; ``grpo-train experiment=digits_diffusion``
fine-tunes it toward a reward (data/tasks/digits.py).
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


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """beta_1..beta_K of the cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17).  [K]"""
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alphabar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alphabar[1:] / alphabar[:-1]).clamp(max=max_beta).float()


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer steps [N] -> [N, dim]."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(1) * frequencies.unsqueeze(0)  # [N, half]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """eps_theta(x_t, t): an MLP of the flattened image and a sinusoidal step embedding."""

    def __init__(self, data_dim: int, hidden_size: int = 256, time_dim: int = 64):
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, hidden_size), nn.SiLU())
        self.input = nn.Linear(data_dim, hidden_size)
        self.body = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size), nn.SiLU()
        )
        self.output = nn.Linear(hidden_size, data_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:  # [N, D], [N] -> [N, D]
        return self.output(self.body(self.input(x) + self.time(timestep_embedding(t, self.time_dim))))


class DiffusionPolicy(GenerativePolicy):
    """An unconditional DDPM over images of ``image_shape``, sampled in ``num_steps`` steps."""

    def __init__(self, image_shape: tuple[int, ...] = (8, 8), num_steps: int = 20, hidden_size: int = 256):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), num_steps=num_steps, hidden_size=hidden_size)
        self.image_shape = tuple(image_shape)
        self.data_dim = math.prod(self.image_shape)
        self.num_steps = num_steps
        self.denoiser = Denoiser(self.data_dim, hidden_size)
        betas = cosine_betas(num_steps)  # [K], index t - 1 for step t
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphabar", torch.cumprod(1 - betas, dim=0), persistent=False)
        self.reference: Optional[Denoiser] = None

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DiffusionPolicy":
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{directory} holds no diffusion policy ({CONFIG_FILE} and {WEIGHTS_FILE})")
        config = json.loads((directory / CONFIG_FILE).read_text())
        policy = cls(**{k: config[k] for k in ("image_shape", "num_steps", "hidden_size")})
        policy.denoiser.load_state_dict(load_file(directory / WEIGHTS_FILE))
        return policy

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.denoiser.state_dict().items()}, directory / WEIGHTS_FILE)

    # -- one reverse step ----------------------------------------------------------------------

    def step_mean(self, x: Tensor, t: Tensor, reference: bool = False) -> Tensor:
        """mu_theta(x_t, t) for images [N, D] at steps t [N] (1..K)."""
        net = self.denoiser
        if reference:
            if self.reference is None:
                raise RuntimeError("no reference policy: call enable_reference() first (algorithm.beta > 0 does)")
            net = self.reference
        beta, alphabar = self.betas[t - 1].unsqueeze(1), self.alphabar[t - 1].unsqueeze(1)  # [N, 1]
        return (x - beta / (1 - alphabar).sqrt() * net(x, t)) / (1 - beta).sqrt()

    def step_std(self, t: Tensor) -> Tensor:
        """sigma_t = sqrt(beta_t) for steps t [N] -> [N]."""
        return self.betas[t - 1].sqrt()

    # -- the contract ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample_trajectories(
        self, count: int, sampling: SamplingParams, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """``count`` trajectories x_K, ..., x_0, flattened: [count, K + 1, D]."""
        device = self.betas.device
        x = torch.randn(count, self.data_dim, device=device, generator=generator)
        states = [x]
        for t in range(self.num_steps, 0, -1):
            steps = torch.full((count,), t, device=device, dtype=torch.long)
            mean = self.step_mean(x, steps)
            if sampling.do_sample:
                noise = torch.randn(count, self.data_dim, device=device, generator=generator)
                x = mean + self.step_std(steps).unsqueeze(1) * sampling.temperature * noise
            else:
                x = mean
            states.append(x)
        return torch.stack(states, dim=1)

    def images(self, trajectories: Tensor) -> Tensor:
        """The final samples x_0 as images in [-1, 1]: [B, *image_shape]."""
        return trajectories[:, -1].clamp(-1, 1).view(-1, *self.image_shape)

    def rollout(
        self, prompts: list[Any], columns: dict[str, list[Any]], group_size: int, sampling: SamplingParams
    ) -> Rollout:
        rows = len(prompts) * group_size
        trajectories = self.sample_trajectories(rows, sampling)  # [B, K + 1, D]
        device = trajectories.device
        tokens = TokenBatch(
            torch.zeros(rows, 1, dtype=torch.long, device=device),  # unconditional: no observation
            torch.ones(rows, 1, dtype=torch.long, device=device),
            trajectories,
            torch.ones(rows, self.num_steps, dtype=torch.long, device=device),  # one element per step
        )
        return grouped_rollout(tokens, prompts, columns, group_size, list(self.images(trajectories)))

    def logprobs_and_entropy(
        self,
        batch: TokenBatch,
        *,
        temperature: float,
        with_entropy: bool,
        reference: bool = False,
        entropy_grad: bool = True,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """log N(x_{t-1}; mu_theta(x_t, t), (temperature sigma_t)^2 I) of every step: [B, K]."""
        trajectories = batch.completion_ids.float()  # [B, K + 1, D]
        rows, steps = trajectories.size(0), self.num_steps
        t = torch.arange(steps, 0, -1, device=trajectories.device).repeat(rows)  # [B*K]: K, ..., 1 per row
        x_t = trajectories[:, :-1].reshape(rows * steps, self.data_dim)
        x_prev = trajectories[:, 1:].reshape(rows * steps, self.data_dim)
        mean = self.step_mean(x_t, t, reference)  # [B*K, D]
        std = (self.step_std(t) * temperature).unsqueeze(1)  # [B*K, 1]
        log_density = -((x_prev - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
        logprobs = log_density.sum(dim=1).view(rows, steps)  # [B, K]
        if not with_entropy:
            return logprobs, None
        entropy = (self.data_dim * (std.log() + 0.5 * math.log(2 * math.pi * math.e))).view(rows, steps)
        return logprobs, entropy  # constant in theta: no grad either way

    def enable_reference(self) -> None:
        if self.reference is None:
            self.reference = copy.deepcopy(self.denoiser).requires_grad_(False)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.denoiser.parameters()

    def reference_pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.reference is None:
            raise RuntimeError("no reference policy: call enable_reference() first (algorithm.beta > 0 does)")
        return zip(self.reference.parameters(), self.denoiser.parameters())

    @torch.no_grad()
    def sample_images(self, count: int, seed: int = 0) -> Tensor:
        """``count`` samples [count, *image_shape] in [-1, 1], drawn with a generator of their own
        (the run's random state is left as it was)."""
        generator = torch.Generator(device=self.betas.device).manual_seed(seed)
        return self.images(self.sample_trajectories(count, SamplingParams(max_new_tokens=1), generator)).cpu()


def build_diffusion_policy(name_or_path: Optional[str] = None, **kwargs: Any) -> DiffusionPolicy:
    """``model.builder`` for a diffusion policy: loaded from ``model.name_or_path`` (the shipped
    ``${asset:digits-diffusion}``, or a run's ``policy/``), or built new (untrained) from
    ``model.builder_kwargs`` with ``model.name_or_path=null``."""
    if name_or_path is not None:
        if kwargs:
            raise ConfigError(
                f"model.builder_kwargs {sorted(kwargs)} would be ignored: the policy is loaded from "
                f"model.name_or_path={name_or_path}; drop them, or set model.name_or_path=null to build a new one"
            )
        return DiffusionPolicy.from_pretrained(name_or_path)
    try:
        return DiffusionPolicy(**kwargs)
    except TypeError as error:
        raise ConfigError(f"model.builder_kwargs do not fit DiffusionPolicy: {error}") from None
