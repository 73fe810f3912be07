"""Policies: the contract the training step uses (base.py: GenerativePolicy for any action space,
Policy for language models), the Hugging Face causal LM that implements it (causal_lm.py), a
Gaussian policy for continuous actions (gaussian.py), a denoising diffusion model (diffusion.py),
the policy a config names (build.py), generation (generation/: the KV-cache loop, ``generate``, vLLM),
scoring (scoring/: log-probs, the fused head, length buckets, shared prompts) and rollouts
(rollout.py: prompts x G -> completions)."""

from grpo_lightning.policy.base import GenerativePolicy, Policy, SamplingParams
from grpo_lightning.policy.causal_lm import CausalLMPolicy

__all__ = ["CausalLMPolicy", "GenerativePolicy", "Policy", "SamplingParams"]
