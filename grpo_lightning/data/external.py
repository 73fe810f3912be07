"""What one policy update learns from, whether generated here or produced elsewhere.

:class:`Experience` is the common form: tokens, rewards, group layout and, when known, the
sampling and reference log-probs. :func:`experience_from_rollout` builds it from our own
generation and scoring; :func:`external_experience` from a batch that already carries
completions (an external inference server's rollouts, the seed trainer's ``train_step(batch)``
form), so the module skips generation and scoring for it.

An external batch is a dict of tensors (the DataLoader's output)::

    prompt_ids      [B, P] left-padded        prompt_mask      [B, P]
    completion_ids  [B, T] right-padded       completion_mask  [B, T] 1 on the tokens the policy sampled
    completion_attention_mask [B, T] optional: 1 on every token of the sequence, where tokens the policy
                    did not sample (tool results, observations of a multi-turn episode) sit between
                    its turns; they are attended to and carry no loss. Without it, completion_mask.
    logprobs        [B, T] log-probs of the completion tokens under the sampling policy
    rewards         [B]    outcome rewards    and/or  token_rewards [B, T] process rewards
    token_reward_mask [B, T] optional: 1 on the tokens where a step (of token_rewards) ends;
                    without it, every non-zero reward and each completion's last token
    ref_logprobs    [B, T] optional; computed here when beta > 0 and it is missing
    truncated       [B]    optional bool: the completion hit the length limit
    group_size      int    optional; overrides algorithm.group_size for this batch

Rows are laid out as consecutive groups: row i belongs to prompt i // group_size.

Artifex's GRPO batch (its ``GRPOTrainer.train_step(batch)``: grouped observations and actions of
any generative policy) is taken as it is::

    observations    [B, ...]  what each action was generated from (G consecutive rows share one)
    actions         [B, ...]  the sampled actions (images, continuous actions, token ids, ...)
    rewards         [B]
    log_probs       [B] per sample, or [B, T] per element (token, denoising step)
    ref_log_probs   optional, shaped as log_probs
    group_size      int       optional; overrides algorithm.group_size (Artifex: num_generations)

The policy scores it as a TokenBatch whose prompt_ids are the observations, completion_ids the
actions and completion_mask all ones shaped as log_probs ([B, 1] for per-sample log-probs): its
``logprobs_and_entropy`` returns log-probs of that shape (policy/base.py, GenerativePolicy).

The overlong reward shaping of DAPO (Yu et al. 2025, arXiv:2503.14476, section 3.4) lives
here too (:func:`overlong_penalty`) because it only needs completion lengths.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch
from torch import Tensor

from grpo_lightning.types import Experience, TokenBatch

EXTERNAL_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs")


ARTIFEX_KEYS = ("observations", "actions", "rewards", "log_probs")


def is_external(batch: dict[str, Any]) -> bool:
    """A batch that already carries completions or actions (as opposed to a batch of prompts)."""
    return "completion_ids" in batch or "actions" in batch


def _group_size(batch: dict[str, Any], rows: int, default_group_size: int) -> int:
    group_size = int(batch.get("group_size", default_group_size))
    if group_size < 2 or rows % group_size:
        raise ValueError(f"external batch: {rows} rows do not form groups of group_size={group_size} (>= 2)")
    return group_size


def artifex_experience(batch: dict[str, Any], default_group_size: int) -> Experience:
    """Check and wrap a batch in Artifex's layout; a ValueError names the missing or misshapen key."""
    missing = [key for key in ARTIFEX_KEYS if key not in batch]
    if missing:
        raise ValueError(f"an observations/actions batch needs {missing}; see grpo_lightning.data.external")
    observations, actions = batch["observations"], batch["actions"]
    rows = observations.size(0)
    log_probs = batch["log_probs"].float()
    log_probs = log_probs.unsqueeze(1) if log_probs.dim() == 1 else log_probs  # [B, T]
    for key in ("actions", "rewards", "log_probs", "ref_log_probs"):
        if key in batch and batch[key].size(0) != rows:
            raise ValueError(f"external batch: {key} has {batch[key].size(0)} rows, observations {rows}")
    if log_probs.dim() != 2 or batch["rewards"].dim() != 1:
        raise ValueError(
            f"external batch: rewards must be [B] and log_probs [B] or [B, T]; got "
            f"{tuple(batch['rewards'].shape)} and {tuple(batch['log_probs'].shape)}"
        )
    ref = batch.get("ref_log_probs")
    if ref is not None:
        ref = ref.float().view(log_probs.shape)
    group_size = _group_size(batch, rows, default_group_size)
    ones = torch.ones(rows, 1, dtype=torch.long, device=log_probs.device)
    return Experience(
        tokens=TokenBatch(observations, ones, actions, torch.ones_like(log_probs, dtype=torch.long)),
        rewards=batch["rewards"].float(),
        group_ids=torch.arange(rows // group_size, device=log_probs.device).repeat_interleave(group_size),
        group_size=group_size,
        sampling_logprobs=log_probs,
        ref_logprobs=ref,
    )


def external_experience(batch: dict[str, Any], default_group_size: int) -> Experience:
    """Check and wrap an external batch (either layout above); a ValueError names the missing or
    misshapen key."""
    if "completion_ids" not in batch:
        return artifex_experience(batch, default_group_size)
    missing = [key for key in EXTERNAL_KEYS if key not in batch]
    if "rewards" not in batch and "token_rewards" not in batch:
        missing.append("rewards (or token_rewards)")
    if "token_reward_mask" in batch and "token_rewards" not in batch:
        missing.append("token_rewards (token_reward_mask marks where they sit)")
    if missing:
        raise ValueError(f"an external rollout batch needs {missing}; see grpo_lightning.data.external")
    completion_ids = batch["completion_ids"]
    rows, length = completion_ids.shape
    for key in (
        "completion_mask",
        "completion_attention_mask",
        "logprobs",
        "ref_logprobs",
        "token_rewards",
        "token_reward_mask",
    ):
        if key in batch and tuple(batch[key].shape) != (rows, length):
            raise ValueError(f"external batch: {key} has shape {tuple(batch[key].shape)}, expected {(rows, length)}")
    group_size = _group_size(batch, rows, default_group_size)
    mask = batch["completion_mask"]

    def padding_zeroed(key: str) -> Optional[Tensor]:
        """``batch[key]`` as float with 0 on padding: what other tools leave there (-inf log-probs,
        NaN rewards) must not reach a sum, where -inf * 0 and NaN * 0 are NaN."""
        values = batch.get(key)
        return None if values is None else torch.where(mask > 0, values.float(), 0.0)  # [B, T]

    token_rewards = padding_zeroed("token_rewards")
    rewards = batch["rewards"].float() if "rewards" in batch else (token_rewards * mask).sum(dim=1)
    if rewards.shape != (rows,):
        raise ValueError(f"external batch: rewards has shape {tuple(rewards.shape)}, expected {(rows,)}")
    truncated = batch.get("truncated")
    return Experience(
        tokens=TokenBatch(
            batch["prompt_ids"],
            batch["prompt_mask"],
            completion_ids,
            mask,
            completion_attention_mask=batch.get("completion_attention_mask"),
        ),
        rewards=rewards,
        group_ids=torch.arange(rows // group_size, device=completion_ids.device).repeat_interleave(group_size),
        group_size=group_size,
        token_rewards=token_rewards,
        token_reward_mask=None if "token_reward_mask" not in batch else batch["token_reward_mask"].bool() & (mask > 0),
        truncated=None if truncated is None else truncated.bool(),
        sampling_logprobs=padding_zeroed("logprobs"),
        ref_logprobs=padding_zeroed("ref_logprobs"),
    )


def with_rewards(experience: Experience, rewards: Tensor) -> Experience:
    return replace(experience, rewards=rewards)
