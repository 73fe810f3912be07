"""Configuration: typed schemas (schema.py, a leaf, and train_schema.py), their validation and
loading from Hydra's composed config (loading.py). Every name is importable from here.

Each group's dataclass checks its own fields in its ``validate()``; validation.py checks the names
that only the algorithm registries know and the constraints between groups, and
:func:`validate_config` runs them all (see validation.py's docstring for where each check lives).
"""

from grpo_lightning.config.loading import asset_path, import_object, register_configs, to_train_config
from grpo_lightning.config.schema import (
    DEFAULT_LENGTH_BUCKETS,
    AgentConfig,
    ConfigError,
    GenerationConfig,
    GRPOConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
)
from grpo_lightning.config.train_schema import (
    WANDB_ONLY_FIELDS,
    CheckpointConfig,
    DataConfig,
    LoggerConfig,
    RewardConfig,
    RewardFunctionConfig,
    TrainConfig,
    TrainerConfig,
)
from grpo_lightning.config.validation import (
    shards_weights_by_name,
    validate_across_groups,
    validate_config,
    validate_registry_names,
)

__all__ = [
    "AgentConfig",
    "CheckpointConfig",
    "ConfigError",
    "DEFAULT_LENGTH_BUCKETS",
    "DataConfig",
    "GRPOConfig",
    "GenerationConfig",
    "LoRAConfig",
    "LoggerConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "RewardFunctionConfig",
    "TrainConfig",
    "TrainerConfig",
    "WANDB_ONLY_FIELDS",
    "asset_path",
    "import_object",
    "register_configs",
    "shards_weights_by_name",
    "to_train_config",
    "validate_across_groups",
    "validate_config",
    "validate_registry_names",
]
