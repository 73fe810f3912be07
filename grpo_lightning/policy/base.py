"""The policy contract: what the training step needs from any generative policy.

The training step only needs four things from a policy, so the math never depends on where
the policy comes from:

* ``encode_prompts(texts)``: left-padded prompt ids and mask;
* ``sample(prompt_ids, prompt_mask, sampling)``: completion ids (no grad, eval mode);
* ``decode(completion_ids, completion_mask)``: completion texts;
* ``logprobs_and_entropy(batch, ...)``: log-probs (and entropy) of completion tokens, under the
  policy or under its frozen reference.

``logprobs_and_entropy`` used to be called ``token_scores``; the old name keeps working both ways: a
policy that defines ``token_scores`` serves ``logprobs_and_entropy``, and every policy answers
``token_scores(...)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Optional

from torch import Tensor, nn

from grpo_lightning.config import GenerationConfig
from grpo_lightning.distributed import AllAgree
from grpo_lightning.policy.generation.vllm import VLLMEngineArgs
from grpo_lightning.types import TokenBatch


@dataclass(frozen=True)
class SamplingParams:
    """How to draw completions. ``do_sample=False`` is greedy decoding."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    backend: str = "auto"
    """"hf": ``model.generate``; "loop": grpo_lightning.policy.generation.loop's lean KV-cache loop;
    "auto": the loop for the model types it supports, else generate; "vllm": a colocated vLLM
    engine (grpo_lightning.policy.generation.vllm), built at the first call with ``vllm_engine``."""
    vllm_engine: VLLMEngineArgs = field(default_factory=VLLMEngineArgs)

    @classmethod
    def from_config(cls, gen: GenerationConfig, do_sample: bool = True) -> SamplingParams:
        """The ``generation`` group's settings; ``do_sample=False`` for greedy validation."""
        engine = VLLMEngineArgs(gen.vllm_gpu_memory_utilization, gen.vllm_max_model_len)
        return cls(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k, do_sample, gen.backend, engine)


class Policy(nn.Module, ABC):
    """What GRPOModule needs from a generative policy."""

    eos_token_ids: list[int]
    lockstep: Optional[AllAgree] = None
    """Set (by ``GRPOModule.setup``) when the weights are sharded across processes: each
    forward call is then a collective, so sampling and scoring must make the same calls on
    every process, whatever their data (grpo_lightning.distributed)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Each class gets both names for one function, so ``super().token_scores`` in a policy
        # written against the old name reaches its parent's scoring, not back into itself.
        own = cls.__dict__
        if "logprobs_and_entropy" in own and "token_scores" not in own:
            cls.token_scores = own["logprobs_and_entropy"]
        elif "token_scores" in own and "logprobs_and_entropy" not in own:
            cls.logprobs_and_entropy = own["token_scores"]

    @abstractmethod
    def encode_prompts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids [B, P] and attention mask [B, P]."""

    @abstractmethod
    def sample(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams) -> Tensor:
        """Completion ids [B, T] (T <= max_new_tokens), padded after the end of each row."""

    @abstractmethod
    def decode(self, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
        """Completion texts, special tokens removed."""

    @abstractmethod
    def logprobs_and_entropy(
        self,
        batch: "TokenBatch",
        *,
        temperature: float,
        with_entropy: bool,
        reference: bool = False,
        entropy_grad: bool = True,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Log-probs [B, T] (and entropy [B, T] or None) of the batch's completion tokens.

        ``entropy_grad=False``: the entropy is only logged, so it may be computed without grad."""

    @abstractmethod
    def enable_reference(self) -> None:
        """Freeze a copy of the current weights as the KL reference."""

    @abstractmethod
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer updates."""

    def weights_updated(self) -> None:
        """Called after each optimizer step: a sampler with its own copy of the weights re-syncs."""
