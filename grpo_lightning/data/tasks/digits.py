"""Digits: GRPO on an image diffusion model, toward a reward from a fixed classifier.

The policy is the DDPM shipped in ``grpo_lightning/assets/digits-diffusion`` (policy/diffusion.py),
pre-trained on scikit-learn's 8x8 handwritten digits by ``scripts/make_digits_diffusion.py``: it
draws all ten digits. The reward of a sample is the probability that a small classifier, trained
by the same script on the same images and then frozen, gives to one chosen digit:
``digit_probability(..., digit=3)`` is "make the digit look like a 3". GRPO compares the G samples
of a group, so the samples that look more like a 3 than their group's others are reinforced.

The model is unconditional: every prompt is the same placeholder, and a group is G samples from
the one distribution. ``grpo-train experiment=digits_diffusion`` runs it and saves
samples_before.png and samples_after.png beside reward_curve.png.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from grpo_lightning.config import ConfigError
from grpo_lightning.config.loading import asset_path

ASSET = "digits-diffusion"
CLASSIFIER_FILE = "classifier.safetensors"
PROMPT = "digit"


class DigitClassifier(nn.Module):
    """Logits over the ten digits of an 8x8 image in [-1, 1]: a one-hidden-layer MLP."""

    def __init__(self, hidden_size: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 10))

    def forward(self, images: Tensor) -> Tensor:  # [N, 8, 8] -> [N, 10]
        return self.net(images)


@functools.lru_cache(maxsize=4)
def load_classifier(directory: Optional[str] = None) -> DigitClassifier:
    """The frozen classifier shipped beside the diffusion model (or in ``directory``)."""
    path = Path(directory or asset_path(ASSET)) / CLASSIFIER_FILE
    if not path.is_file():
        raise ConfigError(f"no digit classifier at {path}; scripts/make_digits_diffusion.py writes it")
    weights = load_file(path)
    classifier = DigitClassifier(hidden_size=weights["net.1.weight"].size(0))
    classifier.load_state_dict(weights)
    return classifier.eval().requires_grad_(False)


def load_prompts(num_train: int = 256, num_val: int = 64) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``data.builder``: the placeholder prompt, ``num_train`` and ``num_val`` times (the model is
    unconditional; the number of rows sets the epoch length and the validation sample size)."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1 (got {num_train}, {num_val})")
    return [{"prompt": PROMPT} for _ in range(num_train)], [{"prompt": PROMPT} for _ in range(num_val)]


def digit_probability(prompts: list[Any], completions: list[Tensor], digit: int = 3, **columns: Any) -> list[float]:
    """Reward: the classifier's probability of ``digit`` for each sampled image (8x8, in [-1, 1])."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0..9 (got {digit})")
    images = torch.stack([torch.as_tensor(c, dtype=torch.float32).cpu() for c in completions])  # [N, 8, 8]
    with torch.no_grad():
        return load_classifier()(images).softmax(dim=1)[:, digit].tolist()


def check_digit_probability_kwargs(digit: int = 3) -> None:
    if not isinstance(digit, int) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an integer 0..9 (got {digit!r})")


digit_probability.check_kwargs = check_digit_probability_kwargs
