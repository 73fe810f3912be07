"""The policy a config names: a causal LM (model.name_or_path), or what model.builder builds."""

from __future__ import annotations

from grpo_lightning.config import ConfigError, ModelConfig, import_object
from grpo_lightning.policy.base import GenerativePolicy
from grpo_lightning.policy.causal_lm import CausalLMPolicy


def build_policy(cfg: ModelConfig) -> GenerativePolicy:
    """``CausalLMPolicy.from_config(cfg)``, or ``builder(name_or_path, **builder_kwargs)`` checked
    to be a GenerativePolicy."""
    if cfg.builder is None:
        return CausalLMPolicy.from_config(cfg)
    builder = import_object(cfg.builder, "model.builder")
    try:
        policy = builder(cfg.name_or_path, **cfg.builder_kwargs)
    except TypeError as error:  # typically arguments the builder does not accept
        raise ConfigError(
            f"model.builder={cfg.builder!r} failed with model.name_or_path={cfg.name_or_path!r} and "
            f"model.builder_kwargs={dict(cfg.builder_kwargs)}: {error}"
        ) from None
    if not isinstance(policy, GenerativePolicy):
        raise ConfigError(
            f"model.builder={cfg.builder!r} returned a {type(policy).__name__}, not a "
            "grpo_lightning.policy.base.GenerativePolicy"
        )
    return policy
