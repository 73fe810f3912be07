"""Configuration: typed schemas (schema.py, a leaf), their validation (validation.py) and loading
from Hydra's composed config (loading.py). Every name is importable from here.
"""

from grpo_lightning.config.loading import asset_path, import_object, register_configs, to_train_config
from grpo_lightning.config.schema import (
    DEFAULT_LENGTH_BUCKETS,
    WANDB_ONLY_FIELDS,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    GenerationConfig,
    GRPOConfig,
    LoggerConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RewardFunctionConfig,
    TrainConfig,
    TrainerConfig,
)
from grpo_lightning.config.validation import shards_weights_by_name, validate_config

__all__ = [
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
    "validate_config",
]
