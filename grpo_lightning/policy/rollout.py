"""Generation: a batch of prompts x G -> completions, their token masks and group ids.

Each prompt is tokenized once and repeated G times, and all N*G rows are sampled in one call
with a KV cache (the lean loop, which prefills each prompt once, or ``generate``; see
``generation.backend``), stopping as soon as every row has produced EOS. The G
completions of a prompt sit next to each other (row i belongs to prompt i // G), which is
the layout the vectorized advantage estimator relies on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from grpo_lightning.policy.base import Policy, SamplingParams
from grpo_lightning.types import Rollout, TokenBatch


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


def _repeat_each(values: list[Any], times: int) -> list[Any]:
    return [value for value in values for _ in range(times)]


def generate_rollout(
    policy: Policy, prompts: list[str], columns: dict[str, list[Any]], group_size: int, sampling: SamplingParams
) -> Rollout:
    """Sample ``group_size`` completions for each prompt."""
    prompt_ids, prompt_mask = policy.encode_prompts(prompts)  # [N, P]
    prompt_ids = prompt_ids.repeat_interleave(group_size, dim=0)  # [N*G, P]
    prompt_mask = prompt_mask.repeat_interleave(group_size, dim=0)
    completion_ids = policy.sample(prompt_ids, prompt_mask, sampling)  # [N*G, T]
    completion_mask, truncated = completion_mask_from_eos(completion_ids, policy.eos_token_ids)
    tokens = TokenBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)
    return Rollout(
        tokens=tokens,
        prompts=_repeat_each(prompts, group_size),
        completions=policy.decode(completion_ids, completion_mask),
        columns={name: _repeat_each(values, group_size) for name, values in columns.items()},
        group_ids=torch.arange(len(prompts), device=prompt_ids.device).repeat_interleave(group_size),
        truncated=truncated,
    )
