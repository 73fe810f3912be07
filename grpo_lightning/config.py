"""Typed configuration schemas, one dataclass per Hydra group.

Every field is documented once, here. Hydra merges the YAML files under ``conf/`` onto these
schemas (``conf/config.yaml`` lists ``train_schema`` first in its defaults), so an unknown key
or a value of the wrong type fails when the config is composed, before anything is built.
Constraints that a type cannot express (``group_size >= 2``, divisibility of batch sizes) are
checked by :func:`validate_config`, which names the offending field and the fix.

References used below:
  [GRPO]  Shao et al. 2024, DeepSeekMath, arXiv:2402.03300 (group-relative advantages, k3 KL).
  [PPO]   Schulman et al. 2017, arXiv:1707.06347 (clipped surrogate).
  [k3]    Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

import importlib
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and how to fix it."""


@dataclass
class GRPOConfig:
    """The algorithm: group sampling, advantages and the clipped-surrogate update."""

    group_size: int = 4
    """Completions sampled per prompt (G in [GRPO]); advantages are normalized within each group."""
    clip_range: float = 0.2
    """PPO clip epsilon [PPO]: the ratio pi/pi_old is clipped to [1 - clip_range, 1 + clip_range]."""
    beta: float = 0.01
    """Weight of the k3 KL penalty to the frozen reference policy [GRPO eq. 3, k3]. 0 disables
    the penalty and the reference model is neither built nor run."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (subtracted from the loss). Entropy is logged either way."""
    normalize_by_std: bool = True
    """Divide group-centred rewards by the group's population std [GRPO]. False keeps only the
    mean baseline, as Dr. GRPO (Liu et al. 2025, arXiv:2503.20783) recommends."""
    adv_eps: float = 1e-8
    """Added to the group std before dividing, so near-constant groups stay finite."""
    adv_estimator: str = "grpo_vectorized"
    """Name in the advantage-estimator registry (``grpo_lightning.advantages``)."""
    num_iterations: int = 1
    """Passes over each generated batch (mu in [GRPO] Algorithm 1). Old log-probs are taken once
    per batch; with 1 pass and 1 mini-batch they equal the current ones and are not recomputed."""
    mini_batch_size: Optional[int] = None
    """Completions per optimizer step; None means the whole batch (data.batch_size * group_size)."""
    micro_batch_size: Optional[int] = None
    """Completions per forward/backward (gradient accumulation inside a mini-batch, for memory);
    None means the whole mini-batch. Does not change the result, only peak memory."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this before each optimizer step; None disables clipping
    (the norm is still logged as actor/grad_norm)."""
    max_consecutive_skips: int = 3
    """An update whose loss or gradient norm is NaN/inf is skipped and counted in
    actor/skipped_updates; this many skips in a row are tolerated, one more stops the run
    (0: stop at the first). See grpo_lightning/numerics.py."""


@dataclass
class GenerationConfig:
    """Sampling of completions during training and validation."""

    max_new_tokens: int = 8
    """Longest completion; completions cut here count in response_length/clip_ratio."""
    temperature: float = 1.0
    """Sampling temperature. The log-probs in the loss are those of this distribution
    (logits / temperature), so the ratio compares like with like."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    val_do_sample: bool = False
    """Validation samples with the settings above when true; greedy decoding when false."""


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (stepped once per optimizer step)."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer steps, then constant."""


@dataclass
class ModelConfig:
    """The policy: a causal LM loaded with ``AutoModelForCausalLM.from_pretrained``."""

    name_or_path: str = MISSING
    """Hugging Face hub id or local directory. ``${asset:NAME}`` resolves to a checkpoint shipped
    inside this package (the embedded default)."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    attn_implementation: Optional[str] = None
    """Passed to from_pretrained (eager, sdpa, flash_attention_2); None lets transformers pick."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint's repository (needed by some hub models)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    logprob_chunk_size: int = 64
    """Completions per chunk when turning logits into log-probs and entropy, so the float32
    log-softmax over the vocabulary is never held for the whole batch at once."""


@dataclass
class DataConfig:
    """Prompts: where they come from and how many go into one training step."""

    builder: str = MISSING
    """Import path of a function returning (train_rows, val_rows), each a list of dicts with a
    prompt column and any other columns (passed to reward functions as keyword lists)."""
    builder_kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the builder."""
    prompt_key: str = "prompt"
    """Column holding the prompt text."""
    batch_size: int = 8
    """Prompts per training step; each yields group_size completions."""
    val_batch_size: int = 64
    """Prompts per validation batch."""
    shuffle: bool = True
    """Shuffle training prompts each epoch (seeded by ``seed``)."""
    num_workers: int = 0
    """DataLoader worker processes (prompts are small; 0 is usually fastest)."""


@dataclass
class RewardFunctionConfig:
    """One reward function and its weight in the total."""

    fn: str = MISSING
    """Import path of a callable ``fn(prompts, completions, **columns) -> list[float | None]``
    (the TRL reward contract). None means "not applicable" for that completion."""
    weight: float = 1.0
    """Weight in the total reward, which is the weighted sum over functions."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments bound to the function (e.g. a pattern or a limit)."""


@dataclass
class RewardConfig:
    functions: Dict[str, RewardFunctionConfig] = field(default_factory=dict)
    """Named reward functions; each is logged as reward/<name>/mean."""
    non_finite: str = "error"
    """A reward function returning NaN or inf: ``error`` stops the run naming the function and
    the prompt; ``zero`` scores that completion 0 and logs how many per step as
    reward/<name>/non_finite (for rewards that fail now and then, e.g. a parser on odd output)."""


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` that a GRPO run uses."""

    max_steps: int = 100
    """Training steps (one step = one batch of prompts, generated and learned from)."""
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    """Lightning precision, e.g. 32-true or bf16-mixed (16-mixed is refused: see validate_config)."""
    val_every_n_steps: int = 50
    """Run validation every this many training steps (and once before the first update)."""
    limit_val_batches: Optional[int] = None
    """Cap on validation batches per validation run; None uses all validation prompts."""
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class CheckpointConfig:
    every_n_steps: int = 50
    """Write ``checkpoints/last.ckpt`` every this many training steps (and at the end)."""
    enabled: bool = True
    """False writes no checkpoints and leaves SIGTERM to Lightning (no pre-emption checkpoint)."""


@dataclass
class LoggerConfig:
    """Where metrics go: ``csv`` (metrics.csv in the run directory), ``wandb`` or ``none``."""

    kind: str = "csv"
    project: str = "grpo-lightning"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); None uses the default of the logged-in account."""
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    run_name: Optional[str] = None
    id: Optional[str] = None
    """W&B run id; set it to resume a run in place."""
    offline: bool = False
    """Write W&B runs locally (``wandb sync`` later); WANDB_MODE=offline does the same."""


@dataclass
class TrainConfig:
    """The whole run, as composed by ``conf/config.yaml``."""

    algorithm: GRPOConfig = field(default_factory=GRPOConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    output_dir: str = MISSING
    """Run directory (metrics.csv, checkpoints, exports). Hydra sets it to its job directory."""
    ckpt_path: Optional[str] = None
    """Resume from this Lightning checkpoint, or ``last`` for ``<output_dir>/checkpoints/last.ckpt``
    (a fresh start when there is none yet, so one command serves the first launch and requeues).
    The resumed run continues exactly; see grpo_lightning/resume.py."""
    validate_before_training: bool = True
    """Run validation once before the first update, so the learning curve has a baseline."""


def import_object(path: str, field_name: str) -> Any:
    """Resolve ``package.module.attribute``; a ConfigError names ``field_name`` if it does not."""
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{field_name}={path!r} does not resolve ({error}); give an import path "
                          "like package.module.function, importable from the current environment") from None


def asset_path(name: str) -> str:
    """Absolute path of a checkpoint shipped in ``grpo_lightning/assets`` (works installed too)."""
    path = Path(str(resources.files("grpo_lightning") / "assets" / name))
    if not path.is_dir():
        raise ConfigError(f"no shipped asset named {name!r} in {path.parent}")
    return str(path)


def register_configs() -> None:
    """Register the schemas with Hydra and the ``${asset:...}`` resolver (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("asset", asset_path, replace=True)


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
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            unknown += _unknown_keys(child, f"{path}.")
    return unknown


def to_train_config(cfg: DictConfig) -> "TrainConfig":
    """The composed config as a TrainConfig, refusing keys the schema does not know."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; see grpo_lightning/config.py "
                          "for the fields of each group (a typo, or a key from another trainer?)")
    try:
        train_config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).splitlines()[0] + f" (at {getattr(error, 'full_key', '?')})") from None
    validate_config(train_config)
    return train_config


LOGGER_KINDS = ("csv", "wandb", "none")
DTYPES = ("float32", "bfloat16", "float16")
REWARD_NON_FINITE = ("error", "zero")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg: TrainConfig) -> None:
    """Check what types cannot: ranges and divisibility. Raises ConfigError naming the field."""
    from grpo_lightning.advantages import ADV_ESTIMATORS

    alg, gen, data = cfg.algorithm, cfg.generation, cfg.data
    _require(alg.group_size >= 2, f"algorithm.group_size must be >= 2 to form a group baseline "
             f"(got {alg.group_size}); try algorithm.group_size=4")
    _require(alg.clip_range > 0, f"algorithm.clip_range must be > 0 (got {alg.clip_range}); "
             "the usual value is 0.2")
    _require(alg.beta >= 0, f"algorithm.beta must be >= 0 (got {alg.beta}); 0 disables the KL term")
    _require(alg.entropy_coef >= 0, f"algorithm.entropy_coef must be >= 0 (got {alg.entropy_coef})")
    _require(alg.adv_eps >= 0, f"algorithm.adv_eps must be >= 0 (got {alg.adv_eps})")
    _require(alg.num_iterations >= 1, f"algorithm.num_iterations must be >= 1 (got {alg.num_iterations})")
    _require(alg.adv_estimator in ADV_ESTIMATORS, f"algorithm.adv_estimator={alg.adv_estimator!r} "
             f"is unknown; choose one of {sorted(ADV_ESTIMATORS)}")
    _require(alg.max_grad_norm is None or alg.max_grad_norm > 0,
             f"algorithm.max_grad_norm must be > 0 or null (got {alg.max_grad_norm})")
    _require(data.batch_size >= 1, f"data.batch_size must be >= 1 (got {data.batch_size})")
    _require(data.val_batch_size >= 1, f"data.val_batch_size must be >= 1 (got {data.val_batch_size})")
    rollout_size = data.batch_size * alg.group_size
    mini = alg.mini_batch_size or rollout_size
    _require(mini >= 1 and rollout_size % mini == 0,
             f"algorithm.mini_batch_size={alg.mini_batch_size} must divide the completions per step "
             f"(data.batch_size * algorithm.group_size = {rollout_size})")
    micro = alg.micro_batch_size or mini
    _require(micro >= 1 and mini % micro == 0,
             f"algorithm.micro_batch_size={alg.micro_batch_size} must divide the mini-batch ({mini})")
    _require(gen.max_new_tokens >= 1, f"generation.max_new_tokens must be >= 1 (got {gen.max_new_tokens})")
    _require(gen.temperature > 0, f"generation.temperature must be > 0 for sampling (got "
             f"{gen.temperature}); greedy validation is generation.val_do_sample=false")
    _require(0 < gen.top_p <= 1, f"generation.top_p must be in (0, 1] (got {gen.top_p})")
    _require(gen.top_k >= 0, f"generation.top_k must be >= 0, 0 disables it (got {gen.top_k})")
    _require(cfg.optim.lr > 0, f"optim.lr must be > 0 (got {cfg.optim.lr})")
    _require(len(cfg.optim.betas) == 2, f"optim.betas must have two values (got {list(cfg.optim.betas)})")
    _require(cfg.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0 (got {cfg.optim.warmup_steps})")
    _require(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r} is unknown; choose one of {DTYPES}")
    _require(cfg.model.logprob_chunk_size >= 1,
             f"model.logprob_chunk_size must be >= 1 (got {cfg.model.logprob_chunk_size})")
    _require(len(cfg.reward.functions) > 0, "reward.functions is empty; add at least one reward "
             "function (see conf/reward/arithmetic.yaml)")
    for name, spec in cfg.reward.functions.items():
        _require(name.isidentifier(), f"reward.functions.{name}: names must be identifiers "
                 "(letters, digits, underscores), they become metric names")
        _require(spec.fn != "" and "." in spec.fn, f"reward.functions.{name}.fn={spec.fn!r} must be "
                 "an import path like package.module.function")
    _require(cfg.trainer.max_steps >= 1, f"trainer.max_steps must be >= 1 (got {cfg.trainer.max_steps})")
    _require(cfg.trainer.val_every_n_steps >= 1,
             f"trainer.val_every_n_steps must be >= 1 (got {cfg.trainer.val_every_n_steps})")
    _require(cfg.trainer.precision not in ("16-mixed", "16", "16-true"),
             f"trainer.precision={cfg.trainer.precision!r}: fp16 needs loss scaling, which the "
             "manual GRPO update does not do; use bf16-mixed or 32-true")
    _require(cfg.checkpoint.every_n_steps >= 1,
             f"checkpoint.every_n_steps must be >= 1 (got {cfg.checkpoint.every_n_steps})")
    _require(alg.max_consecutive_skips >= 0,
             f"algorithm.max_consecutive_skips must be >= 0 (got {alg.max_consecutive_skips})")
    _require(cfg.reward.non_finite in REWARD_NON_FINITE, f"reward.non_finite={cfg.reward.non_finite!r} "
             f"is unknown; choose one of {REWARD_NON_FINITE}")
    _require(cfg.logger.kind in LOGGER_KINDS,
             f"logger.kind={cfg.logger.kind!r} is unknown; choose one of {LOGGER_KINDS}")
