"""Generation: a batch of prompts x G -> completions, their token masks and group ids.

Each prompt is tokenized once and repeated G times, and all N*G rows are sampled in one call
with a KV cache (the lean loop, which prefills each prompt once, or ``generate``; see
``generation.backend``), stopping as soon as every row has produced EOS. The G
completions of a prompt sit next to each other (row i belongs to prompt i // G), which is
the layout the vectorized advantage estimator relies on. The language model's form lives in
:meth:`grpo_lightning.policy.base.Policy.rollout`; other policies bring their own ``rollout``.
"""

from __future__ import annotations

from typing import Any

from grpo_lightning.policy.base import GenerativePolicy, SamplingParams, completion_mask_from_eos
from grpo_lightning.types import Rollout

__all__ = ["completion_mask_from_eos", "generate_rollout"]


def generate_rollout(
    policy: GenerativePolicy,
    prompts: list[Any],
    columns: dict[str, list[Any]],
    group_size: int,
    sampling: SamplingParams,
) -> Rollout:
    """Sample ``group_size`` completions (actions) for each prompt: ``policy.rollout``."""
    return policy.rollout(prompts, columns, group_size, sampling)
