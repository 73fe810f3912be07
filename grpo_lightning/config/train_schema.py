"""Typed configuration schemas of the run around the algorithm: the data, reward, trainer,
checkpoint and logger groups, and TrainConfig, the whole run (registered with Hydra as
``train_schema``).

The algorithm, generation, optim and model groups, the ConfigError every check raises and the
description of where each kind of check lives are in schema.py. As there, every field is
documented once, in the attribute docstring under it, and each group's ``validate()`` checks its
own fields; names from the algorithm registries and constraints between groups are checked in
validation.py. This module imports nothing of grpo_lightning but schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from grpo_lightning.config.schema import (
    AgentConfig,
    ConfigError,
    GenerationConfig,
    GRPOConfig,
    ModelConfig,
    OptimConfig,
    _require,
    _require_finite,
    _set_fields,
)

OVERLONG_PROMPTS = ("drop", "truncate")


REWARD_NON_FINITE = ("error", "zero")


PROFILERS = ("simple", "advanced", "pytorch")


LOGGER_KINDS = ("csv", "wandb", "none")


@dataclass
class DataConfig:
    """Prompts: where they come from and how many go into one training step."""

    builder: Optional[str] = None
    """Import path of a function returning (train_rows, val_rows), each a list of dicts with a
    prompt column and any other columns (passed to reward functions as keyword lists). Set
    either this or ``path``."""
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
    path: Optional[str] = None
    """Prompt file (JSONL, JSON, CSV or Parquet, by extension) or, with data=hf, a dataset
    directory or hub id, read with the ``datasets`` library. Set either this or ``builder``."""
    config_name: Optional[str] = None
    """Dataset configuration of a hub dataset (e.g. ``main`` for openai/gsm8k)."""
    split: str = "train"
    """Split of ``path`` used for training."""
    val_split: Optional[str] = None
    """Split of ``path`` used for validation (e.g. ``test``); else val_path or val_fraction."""
    val_path: Optional[str] = None
    """Separate validation file, in the same formats as ``path``."""
    val_fraction: float = 0.05
    """Without val_split or val_path: this fraction of the shuffled training rows is held out."""
    max_val_prompts: Optional[int] = None
    """Keep at most this many validation prompts (after shuffling); None keeps all."""
    answer_key: Optional[str] = None
    """Column with the reference answer; renamed to ``answer``, the keyword built-in rewards
    read. None leaves the columns as they are."""
    apply_chat_template: bool = False
    """Format each prompt with the tokenizer's chat template (user turn + generation prompt).
    Needed for instruct models, and for chat-format prompts (lists of role/content messages)."""
    system_prompt: Optional[str] = None
    """System message put before each prompt by the chat template."""
    max_prompt_length: Optional[int] = None
    """Longest prompt in tokens (after formatting); None keeps every prompt whole."""
    overlong_prompts: str = "drop"
    """What to do with prompts longer than max_prompt_length: ``drop`` them (the count is
    logged) or ``truncate`` them, keeping their last tokens (where generation starts)."""
    overfit_rows: Optional[int] = None
    """Train and validate on the first N training rows only (``debug=overfit``): a pipeline that
    cannot drive the reward up on a few memorisable prompts has a bug. None uses the splits."""

    def validate(self) -> None:
        """Check this group's fields (all of them its own). The completions per step
        (batch_size * algorithm.group_size) and the room vLLM leaves for max_prompt_length are
        checked in grpo_lightning/config/validation.py."""
        _require(self.batch_size >= 1, f"data.batch_size must be >= 1 (got {self.batch_size})")
        _require(self.val_batch_size >= 1, f"data.val_batch_size must be >= 1 (got {self.val_batch_size})")
        _require_finite(self, "data.")
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0 (got {self.num_workers})")
        _require(
            (self.builder is None) != (self.path is None),
            "set exactly one of data.builder and data.path (e.g. data=jsonl data.path=prompts.jsonl, "
            f"or data=arithmetic); got builder={self.builder!r}, path={self.path!r}",
        )
        _require(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1) (got {self.val_fraction})")
        _require(
            self.max_val_prompts is None or self.max_val_prompts >= 1,
            f"data.max_val_prompts must be >= 1 or null (got {self.max_val_prompts})",
        )
        _require(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            f"data.max_prompt_length must be >= 1 or null (got {self.max_prompt_length})",
        )
        _require(
            self.overlong_prompts in OVERLONG_PROMPTS,
            f"data.overlong_prompts={self.overlong_prompts!r} is unknown; choose one of {OVERLONG_PROMPTS}",
        )
        _require(self.val_split is None or self.val_path is None, "set at most one of data.val_split and data.val_path")
        _require(
            (self.val_split is None and self.val_path is None) or not _set_fields(self, ("val_fraction",)),
            f"data.val_fraction={self.val_fraction} applies only without data.val_path and data.val_split, "
            "which give the validation rows themselves; drop one",
        )
        path_only = _set_fields(self, ("config_name", "split", "val_split", "val_path", "val_fraction", "answer_key"))
        if self.builder is not None and path_only:
            raise ConfigError(
                f"data.{path_only[0]} applies to data.path only; with data.builder={self.builder!r} "
                "the builder chooses the rows"
            )
        _require(
            self.overfit_rows is None or self.overfit_rows >= self.batch_size,
            f"data.overfit_rows={self.overfit_rows} must be >= data.batch_size ({self.batch_size}) or null",
        )


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
    """The reward of a completion: the weighted sum of named reward functions."""

    functions: Dict[str, Any] = field(default_factory=dict)
    """Named reward functions, each a :class:`RewardFunctionConfig` (checked as one at load); each
    is logged as reward/<name>/mean. Add one from the command line with
    ``+reward.functions.fmt={fn:grpo_lightning.rewards.format.format_reward,weight:0.2}``
    (typed as ``Dict[str, RewardFunctionConfig]``, OmegaConf would refuse that override)."""
    non_finite: str = "error"
    """A reward function returning NaN or inf: ``error`` stops the run naming the function and
    the prompt; ``zero`` scores that completion 0 and logs how many per step as
    reward/<name>/non_finite (for rewards that fail now and then, e.g. a parser on odd output)."""
    timeout_s: Optional[float] = 600.0
    """Seconds one reward function may take on one batch; past it the run stops naming the
    function (a hung verifier or sandbox would otherwise stall the run, and a pre-emption signal
    waits for the step). None waits for ever. Enforced by a timer signal in the main thread on
    POSIX systems; not enforced where a reward is called from another thread."""

    def validate(self) -> None:
        """Check this group's fields (all of them its own); each entry of functions must already be
        a RewardFunctionConfig (to_train_config makes it one). Whether generation.val_pass_reward
        names one of them, and that there is a reward at all (an agent's environment may bring its
        own), are checked in grpo_lightning/config/validation.py."""
        _require_finite(self, "reward.")
        _require(
            self.timeout_s is None or self.timeout_s > 0,
            f"reward.timeout_s must be > 0 or null (no limit) (got {self.timeout_s})",
        )
        for name, spec in self.functions.items():
            _require(
                name.isidentifier(),
                f"reward.functions.{name}: names must be identifiers "
                "(letters, digits, underscores), they become metric names",
            )
            _require(
                spec.fn != "" and "." in spec.fn,
                f"reward.functions.{name}.fn={spec.fn!r} must be an import path like package.module.function",
            )
        _require(
            self.non_finite in REWARD_NON_FINITE,
            f"reward.non_finite={self.non_finite!r} is unknown; choose one of {REWARD_NON_FINITE}",
        )


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` that a GRPO run uses."""

    max_steps: int = 100
    """Training steps (one step = one batch of prompts, generated and learned from)."""
    accelerator: str = "auto"
    """cpu, gpu (cuda), mps or auto (Lightning's choice)."""
    devices: Any = "auto"
    """Devices (processes) per node: a count, a list of GPU indices, or auto."""
    strategy: str = "auto"
    """Lightning strategy: ddp, fsdp, deepspeed_stage_3, ... (see README, Multi-process)."""
    num_nodes: int = 1
    """Machines in a multi-node run (SLURM or torchrun, README)."""
    precision: str = "32-true"
    """Lightning precision, e.g. 32-true or bf16-mixed (16-mixed is refused: see validate)."""
    val_every_n_steps: int = 50
    """Run validation every this many training steps (and once before the first update)."""
    limit_val_batches: Optional[int] = None
    """Cap on validation batches per validation run; None uses all validation prompts, 0 runs
    no validation at all (not even the final one)."""
    log_every_n_steps: int = 1
    """Send the step metrics to the loggers every this many training steps."""
    enable_progress_bar: bool = True
    """The progress bar on a terminal (console lines otherwise); false shows neither."""
    deterministic: bool = False
    """torch's deterministic algorithms (slower on GPUs; CPU runs are deterministic anyway)."""
    console_log_every_n_steps: int = 10
    """When stdout is not a terminal (CI, SLURM logs) the progress bar is replaced by one line
    every this many training steps; 0 silences it. Needs enable_progress_bar."""
    profiler: Optional[str] = None
    """Lightning profiler: simple, advanced or pytorch (``debug=profile``); None disables it."""

    def validate(self) -> None:
        """Check this group's own fields. What a sharded strategy rules out (generation.backend=vllm,
        model.length_buckets > 1) is checked in grpo_lightning/config/validation.py."""
        _require_finite(self, "trainer.")
        _require(
            self.limit_val_batches is None or self.limit_val_batches >= 0,
            f"trainer.limit_val_batches must be >= 0 or null (got {self.limit_val_batches})",
        )
        _require(self.max_steps >= 1, f"trainer.max_steps must be >= 1 (got {self.max_steps})")
        _require(self.val_every_n_steps >= 1, f"trainer.val_every_n_steps must be >= 1 (got {self.val_every_n_steps})")
        _require(
            self.log_every_n_steps >= 1,
            f"trainer.log_every_n_steps must be >= 1 (got {self.log_every_n_steps}); to log nothing use logger=none",
        )
        _require(
            self.precision not in ("16-mixed", "16", "16-true"),
            f"trainer.precision={self.precision!r}: fp16 needs loss scaling, which the "
            "manual GRPO update does not do; use bf16-mixed or 32-true",
        )
        _require(
            self.console_log_every_n_steps >= 0,
            f"trainer.console_log_every_n_steps must be >= 0, 0 silences it (got {self.console_log_every_n_steps})",
        )
        _require(
            self.profiler is None or self.profiler in PROFILERS,
            f"trainer.profiler={self.profiler!r} is unknown; choose one of {PROFILERS} or null",
        )


@dataclass
class CheckpointConfig:
    """Lightning checkpoints in the run directory, for resuming (``ckpt_path``)."""

    every_n_steps: int = 50
    """Write ``checkpoints/last.ckpt`` every this many training steps (and at the end)."""
    enabled: bool = True
    """False writes no checkpoints and leaves SIGTERM to Lightning (no pre-emption checkpoint)."""
    save_frozen_weights: bool = True
    """False leaves out the weights that never train (the KL reference copy; with LoRA the base
    model, so only the adapters are kept): a resume loads them again from model.name_or_path and
    checks them against a fingerprint. Bitwise resume is kept (grpo_lightning/slim_checkpoint.py)."""
    save_optimizer_state: bool = True
    """False leaves out AdamW's two moments per trainable weight (two thirds of a full-model
    checkpoint without a reference): a resume starts them from zero, so it continues training but
    no longer matches the uninterrupted run."""

    def validate(self) -> None:
        """Check this group's fields (all of them its own)."""
        _require(self.every_n_steps >= 1, f"checkpoint.every_n_steps must be >= 1 (got {self.every_n_steps})")


@dataclass
class LoggerConfig:
    """Where metrics go: ``csv`` (metrics.csv in the run directory), ``wandb`` or ``none``."""

    kind: str = "csv"
    """csv, wandb (which also writes metrics.csv) or none; chosen with logger=<kind>."""
    project: str = "grpo-lightning"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); None uses the default of the logged-in account."""
    group: Optional[str] = None
    """W&B run group (e.g. one per sweep or experiment). A label of the run under every logger
    (the csv logger records it in hparams.yaml), so experiment overlays may set it; so is
    ``tags``. Every other field of this group but ``kind`` applies to logger=wandb only and is
    refused with another logger."""
    tags: List[str] = field(default_factory=list)
    """W&B run tags; recorded like ``group``."""
    run_name: Optional[str] = None
    """W&B run name; None lets W&B pick one."""
    id: Optional[str] = None
    """W&B run id; set it to resume a run in place."""
    offline: bool = False
    """Write W&B runs locally (``wandb sync`` later); WANDB_MODE=offline does the same."""
    log_completions_every: int = 10
    """W&B only: every this many training steps, log a table of the step's prompts, completions,
    each reward, total reward and advantage, with reward and length histograms; 0 disables it."""

    def validate(self) -> None:
        """Check this group's fields (all of them its own)."""
        _require(self.kind in LOGGER_KINDS, f"logger.kind={self.kind!r} is unknown; choose one of {LOGGER_KINDS}")
        if self.kind != "wandb":  # accepted and then ignored, they would mislead
            unused = [f"logger.{name}" for name in _set_fields(self, WANDB_ONLY_FIELDS)]
            _require(
                not unused,
                f"{', '.join(unused)} only applies with logger=wandb (this run: "
                f"logger={self.kind}); add logger=wandb or remove it",
            )
        _require(
            self.log_completions_every >= 0,
            f"logger.log_completions_every must be >= 0, 0 disables it (got {self.log_completions_every})",
        )


WANDB_ONLY_FIELDS = ("project", "entity", "run_name", "id", "offline", "log_completions_every")


@dataclass
class TrainConfig:
    """The whole run, as composed by ``conf/config.yaml``."""

    # The groups, each selected in conf/ (algorithm=dapo, model=hf, ...) and documented in its class.
    algorithm: GRPOConfig = field(default_factory=GRPOConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    seed: int = 0
    """Seeds python, numpy and torch (Lightning's seed_everything), the prompt order and the
    validation split; the same seed gives the same run on CPU."""
    output_dir: str = MISSING
    """Run directory (metrics.csv, checkpoints, exports). Hydra sets it to its job directory."""
    ckpt_path: Optional[str] = None
    """Resume from this Lightning checkpoint, or ``last`` for ``<output_dir>/checkpoints/last.ckpt``
    (a fresh start when there is none yet, so one command serves the first launch and requeues).
    The resumed run continues exactly; see grpo_lightning/run/checkpoints.py."""
    validate_before_training: bool = True
    """Run validation once before the first update, so the learning curve has a baseline."""
    optimized_metric: Optional[str] = None
    """Metric that ``grpo-train`` returns to Hydra, e.g. ``val/reward/mean`` for the Optuna
    sweeper (``hparams_search=optuna``). A name the run never logs is an error."""

    def validate(self) -> None:
        """Check every group on its own fields, then ``seed``. Not the whole check:
        :func:`grpo_lightning.config.validate_config` adds the registry names and the constraints
        between groups, and is what loading a config runs."""
        for group in (
            self.algorithm,
            self.generation,
            self.optim,
            self.model,
            self.data,
            self.reward,
            self.trainer,
            self.checkpoint,
            self.logger,
            self.agent,
        ):
            group.validate()
        _require(0 <= self.seed < 2**32, f"seed must be in [0, 2**32) (got {self.seed})")
