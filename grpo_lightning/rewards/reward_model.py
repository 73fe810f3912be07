"""``RewardModel``: a learned reward from a Hugging Face sequence-classification model.

    functions:
      rm:
        fn: grpo_lightning.rewards.reward_model.RewardModel   # a class: built once with kwargs
        weight: 0.5
        kwargs: {name_or_path: my-org/my-reward-model, batch_size: 16}

The model scores ``prompt + completion`` (or the chat-formatted pair, ``chat_template: true``)
in batches, without gradients, on the device of the policy (WeightedReward moves it there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from grpo_lightning.config import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RewardModel:
    """Callable with the reward contract: the classifier's logit ``label`` per completion."""

    def __init__(
        self,
        name_or_path: str,
        *,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        label: int = 0,
        dtype: str = "float32",
        chat_template: bool = False,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if name_or_path.startswith((".", "/", "~")) and not (Path(name_or_path).expanduser() / "config.json").is_file():
            raise ConfigError(
                f"reward model name_or_path={name_or_path!r}: no config.json there; give a "
                "directory written by save_pretrained, or a hub id"
            )
        if dtype not in _DTYPES:
            raise ConfigError(f"reward model dtype={dtype!r} is unknown; choose one of {tuple(_DTYPES)}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
            ).eval()
        except OSError as error:
            raise ConfigError(f"reward model {name_or_path!r} could not be loaded: {error}") from None
        self.model.requires_grad_(False)
        if not 0 <= label < self.model.config.num_labels:
            raise ConfigError(
                f"reward model label={label} is out of range: the model has {self.model.config.num_labels} output(s)"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # Sequence classifiers pool at the last non-pad token, which needs the pad id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"reward model {name_or_path!r} has no chat template; use chat_template: false")
        self.batch_size, self.max_length, self.label = batch_size, max_length, label
        self.chat_template = chat_template

    def to(self, device: torch.device | str) -> "RewardModel":
        self.model.to(device)
        return self

    def _texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        if not self.chat_template:
            return [prompt + completion for prompt, completion in zip(prompts, completions)]
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
            )
            for prompt, completion in zip(prompts, completions)
        ]

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        texts = self._texts(prompts, completions)
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                add_special_tokens=not self.chat_template,
            ).to(device)
            logits = self.model(**encoded).logits  # [b, num_labels]
            scores += logits[:, self.label].float().tolist()
        return scores
