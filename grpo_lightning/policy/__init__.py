"""Policies: the contract the training step uses (base.py), the Hugging Face causal LM that
implements it (causal_lm.py), generation (generation/: the KV-cache loop, ``generate``, vLLM),
scoring (scoring/: log-probs, the fused head, length buckets, shared prompts) and rollouts
(rollout.py: prompts x G -> completions)."""

from grpo_lightning.policy.base import Policy, SamplingParams
from grpo_lightning.policy.causal_lm import CausalLMPolicy

__all__ = ["CausalLMPolicy", "Policy", "SamplingParams"]
