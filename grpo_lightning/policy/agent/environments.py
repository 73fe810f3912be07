"""Environments: TRL's ``environment_factory`` contract, so a TRL environment class works unchanged.

An environment is built with no arguments (``factory()``: a class, or any callable returning an
instance), once per episode, and then:

* ``reset(**row)`` receives the dataset row's columns as keywords and returns the first
  observation: a string appended to the prompt's last user message, or None;
* its public methods (those not starting with ``_``, other than ``reset`` and ``get_reward``) are
  the tools the model may call, with type hints and docstrings like any tool; state lives in the
  instance across turns;
* ``done`` (optional attribute or property, ours): when true after a turn's tool calls, the episode
  ends there (TRL ends an episode only when the model answers without a tool call);
* ``get_reward()`` (optional): the environment owns a reward, read once per finished episode and
  added to the reward functions with weight 1 under the class's name (TRL's rule; ours:
  ``agent.environment_reward_weight`` sets another, 0 to log it without training on it).

Reward functions receive the episodes' instances as ``environments=`` (rewards/__init__.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

from grpo_lightning.config import ConfigError
from grpo_lightning.policy.agent.tools import Tool, tool_from_function

NOT_TOOLS = ("reset", "get_reward")


@dataclass
class EnvironmentSpec:
    """An environment factory, checked once at start: its tools and whether it owns a reward."""

    factory: Callable[[], Any]
    name: str  # the class name: the reward's name where it owns one
    method_names: list[str]
    schemas: list[dict[str, Any]]  # the tools' schemas, the same for every instance
    owns_reward: bool

    @classmethod
    def from_factory(cls, factory: Callable[[], Any], origin: str) -> "EnvironmentSpec":
        probe = _build(factory, origin)
        kind = type(probe)
        if not callable(getattr(probe, "reset", None)):
            raise ConfigError(
                f"{origin}: {kind.__name__} has no reset method; an environment needs reset(**row) returning "
                "the first observation (a string, or None)"
            )
        # Methods listed on the class: listing the instance would evaluate its properties.
        names = [
            name
            for name, _ in inspect.getmembers(kind, predicate=inspect.isfunction)
            if not name.startswith("_") and name not in NOT_TOOLS
        ]
        schemas = [tool_from_function(getattr(probe, name), f"{origin} method {name}").schema for name in names]
        return cls(factory, kind.__name__, names, schemas, callable(getattr(probe, "get_reward", None)))

    def start(self, row: dict[str, Any], origin: str) -> tuple[Any, Optional[str], list[Tool]]:
        """A new instance reset with ``row``: (instance, first observation, its tools)."""
        instance = _build(self.factory, origin)
        try:
            observation = instance.reset(**row)
        except TypeError as error:
            raise ConfigError(
                f"{origin}: {self.name}.reset(**row) cannot take this dataset row ({error}); the row's columns "
                f"are {sorted(row)}: accept them as keyword arguments (add **kwargs for the ones it ignores)"
            ) from None
        if observation is not None and not isinstance(observation, str):
            raise ConfigError(
                f"{origin}: {self.name}.reset returned {type(observation).__name__}; it must return the first "
                "observation as a string, or None"
            )
        tools = [Tool(name, getattr(instance, name), schema) for name, schema in zip(self.method_names, self.schemas)]
        return instance, observation, tools

    def reward_function(self) -> Callable[..., list[Optional[float]]]:
        """The environment's own reward as a reward function of the episodes' instances."""
        kind_name = self.name

        def environment_reward(environments: list[Any], **_: Any) -> list[Optional[float]]:
            return [
                env.get_reward() if type(env).__name__ == kind_name and hasattr(env, "get_reward") else None
                for env in environments
            ]

        environment_reward.__qualname__ = f"{kind_name}.get_reward"
        return environment_reward


def _build(factory: Callable[[], Any], origin: str) -> Any:
    try:
        return factory()
    except Exception as error:
        raise ConfigError(
            f"{origin}: the environment cannot be built: {getattr(factory, '__qualname__', factory)}() raised "
            f"{type(error).__name__}: {error}. Environments are built with no arguments (TRL's "
            "environment_factory); the dataset row reaches reset(**row)"
        ) from None


def episode_done(environment: Any) -> bool:
    """Whether the environment ended the episode (its optional ``done``)."""
    return bool(getattr(environment, "done", False))
