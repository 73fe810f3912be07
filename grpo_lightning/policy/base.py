"""The policy contract: what the training step needs from any generative policy.

:class:`GenerativePolicy` is the contract for any action space (tokens, continuous actions,
denoising steps): the training step needs two things from it, so the math never depends on what
the policy generates:

* ``rollout(prompts, columns, group_size, sampling)``: G actions per observation, in a
  :class:`~grpo_lightning.types.Rollout` whose ``tokens`` hold the observations
  (``prompt_ids``), the actions (``completion_ids``, any shape with the batch first) and the mask
  of the elements that carry a log-probability (``completion_mask`` [B, T]: tokens, denoising
  steps, or one element per sample), and whose ``completions`` are what the rewards judge;
* ``logprobs_and_entropy(batch, ...)``: log-probs [B, T] (and entropy) of those elements under the
  policy or under its frozen reference.

:class:`Policy` is its language-model form: prompts are texts, actions tokens, and the rollout is
built from four token-level methods:

* ``encode_prompts(texts)``: left-padded prompt ids and mask;
* ``sample(prompt_ids, prompt_mask, sampling)``: completion ids (no grad, eval mode);
* ``decode(completion_ids, completion_mask)``: completion texts;
* ``logprobs_and_entropy(batch, ...)``: as above, per completion token.

``logprobs_and_entropy`` used to be called ``token_scores``; the old name keeps working both ways: a
policy that defines ``token_scores`` serves ``logprobs_and_entropy``, and every policy answers
``token_scores(...)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from grpo_lightning.config import GenerationConfig
from grpo_lightning.distributed import AllAgree
from grpo_lightning.policy.generation.vllm import VLLMEngineArgs
from grpo_lightning.types import Rollout, TokenBatch


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
    seed: Optional[int] = None
    """Draw from a generator of this seed instead of torch's global one (asynchronous rollouts:
    the sampler thread's draws must not depend on, nor disturb, the training thread's)."""
    record_logprobs: bool = False
    """Keep the sampler's log-probs of the drawn tokens (rollout correction compares them with the
    trainer's); policies and backends that cannot leave them out (Rollout.sampling_logprobs None)."""

    @classmethod
    def from_config(cls, gen: GenerationConfig, do_sample: bool = True) -> SamplingParams:
        """The ``generation`` group's settings; ``do_sample=False`` for greedy validation."""
        engine = VLLMEngineArgs(gen.vllm_gpu_memory_utilization, gen.vllm_max_model_len)
        return cls(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k, do_sample, gen.backend, engine)


class GenerativePolicy(nn.Module, ABC):
    """What GRPOModule needs from a generative policy of any action space."""

    lockstep: Optional[AllAgree] = None
    """Set (by ``GRPOModule.setup``) when the weights are sharded across processes: each
    forward call is then a collective, so sampling and scoring must make the same calls on
    every process, whatever their data (grpo_lightning.distributed)."""
    max_completion_tokens: Optional[int] = None
    """generation.max_new_tokens, set by GRPOModule: the longest completion (language models)."""

    @abstractmethod
    def rollout(
        self, prompts: list[Any], columns: dict[str, list[Any]], group_size: int, sampling: SamplingParams
    ) -> Rollout:
        """``group_size`` actions for each prompt (observation), sampled without grad; row i
        belongs to prompt i // group_size, and ``columns`` are repeated alike."""

    @abstractmethod
    def logprobs_and_entropy(
        self,
        batch: TokenBatch,
        *,
        temperature: float,
        with_entropy: bool,
        reference: bool = False,
        entropy_grad: bool = True,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Log-probs [B, T] (and entropy [B, T] or None) of the batch's actions, one per element
        of ``completion_mask``, under the policy (with grad) or its frozen reference.

        ``entropy_grad=False``: the entropy is only logged, so it may be computed without grad."""

    @abstractmethod
    def enable_reference(self) -> None:
        """Freeze a copy of the current weights as the KL reference."""

    @abstractmethod
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer updates."""

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Export the trained policy (``policy/`` of a run) so that it loads again."""

    def weights_updated(self) -> None:
        """Called after each optimizer step: a sampler with its own copy of the weights re-syncs."""

    def reference_pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(reference tensor, current tensor) for every weight of the frozen reference, for
        :meth:`refresh_reference`."""
        raise NotImplementedError(f"{type(self).__name__} cannot refresh its reference policy")

    @torch.no_grad()
    def refresh_reference(self, mix: float) -> None:
        """reference <- mix * current + (1 - mix) * reference, weight by weight (mix 1: a copy).
        algorithm.ref_update_every calls it (TR-DPO's soft and hard updates)."""
        for reference, current in self.reference_pairs():
            reference.lerp_(current.to(reference.dtype), mix)

    def sample_images(self, count: int, seed: int = 0) -> Optional[Tensor]:
        """``count`` samples as images [count, H, W] in [-1, 1], drawn with a generator of their
        own, for the run's before/after grids (samples_before.png, samples_after.png); None for a
        policy whose samples are not images."""
        return None


def completion_mask_from_eos(completion_ids: Tensor, eos_token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """Mask [B, T] of tokens up to and including the first EOS, and whether each row lacks one.

    Padding after EOS may itself be the EOS id (many tokenizers pad with EOS), so the mask is
    built from the first EOS position, not from comparing with the pad id.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    has_eos = is_eos.any(dim=1)  # [B]
    length = completion_ids.size(1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), length - 1)  # [B]
    positions = torch.arange(length, device=completion_ids.device)
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()  # [B, T]
    return mask, ~has_eos


def repeat_each(values: list[Any], times: int) -> list[Any]:
    """[a, b] -> [a, a, b, b] for times=2: each prompt's value for each of its completions."""
    return [value for value in values for _ in range(times)]


def grouped_rollout(
    tokens: TokenBatch,
    prompts: list[Any],
    columns: dict[str, list[Any]],
    group_size: int,
    completions: list[Any],
    truncated: Optional[Tensor] = None,
    sampling_logprobs: Optional[Tensor] = None,
) -> Rollout:
    """A Rollout of ``group_size`` consecutive rows per prompt: the prompts, columns and group ids
    repeated alike; ``truncated`` None means no row was cut."""
    device = tokens.completion_mask.device
    rows = len(prompts) * group_size
    return Rollout(
        tokens=tokens,
        prompts=repeat_each(prompts, group_size),
        completions=completions,
        columns={name: repeat_each(values, group_size) for name, values in columns.items()},
        group_ids=torch.arange(len(prompts), device=device).repeat_interleave(group_size),
        truncated=torch.zeros(rows, dtype=torch.bool, device=device) if truncated is None else truncated,
        sampling_logprobs=sampling_logprobs,
    )


class Policy(GenerativePolicy):
    """A language model as a generative policy: prompts are texts, actions are tokens."""

    eos_token_ids: list[int]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Each class gets both names for one function, so ``super().token_scores`` in a policy
        # written against the old name reaches its parent's scoring, not back into itself.
        own = cls.__dict__
        if "logprobs_and_entropy" in own and "token_scores" not in own:
            cls.token_scores = own["logprobs_and_entropy"]
        elif "token_scores" in own and "logprobs_and_entropy" not in own:
            cls.logprobs_and_entropy = own["token_scores"]

    def rollout(
        self, prompts: list[str], columns: dict[str, list[Any]], group_size: int, sampling: SamplingParams
    ) -> Rollout:
        """Each prompt tokenized once and repeated G times, all N*G rows sampled in one call."""
        prompt_ids, prompt_mask = self.encode_prompts(prompts)  # [N, P]
        prompt_ids = prompt_ids.repeat_interleave(group_size, dim=0)  # [N*G, P]
        prompt_mask = prompt_mask.repeat_interleave(group_size, dim=0)
        completion_ids, sampling_logprobs = self.sample_with_logprobs(prompt_ids, prompt_mask, sampling)  # [N*G, T]
        completion_mask, truncated = completion_mask_from_eos(completion_ids, self.eos_token_ids)
        tokens = TokenBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)
        completions = self.decode(completion_ids, completion_mask)
        return grouped_rollout(tokens, prompts, columns, group_size, completions, truncated, sampling_logprobs)

    def sample_with_logprobs(
        self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Completion ids [B, T] and, where ``sampling.record_logprobs`` and the backend can, the
        sampler's log-probs [B, T] of them; None otherwise."""
        return self.sample(prompt_ids, prompt_mask, sampling), None

    @abstractmethod
    def encode_prompts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids [B, P] and attention mask [B, P]."""

    @abstractmethod
    def sample(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams) -> Tensor:
        """Completion ids [B, T] (T <= max_new_tokens), padded after the end of each row."""

    @abstractmethod
    def decode(self, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
        """Completion texts, special tokens removed."""
