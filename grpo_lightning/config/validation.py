"""What types cannot say: ranges, divisibility, options that contradict each other or have no effect.

Each check raises a ConfigError that names the field and the fix, when the config is loaded."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
from typing import Any

from grpo_lightning.algo.advantages import ADV_ESTIMATORS, SCALE_REWARDS, SELF_SCALED
from grpo_lightning.algo.kl import KL_ESTIMATORS
from grpo_lightning.algo.losses import LOSS_AGGREGATIONS, POLICY_LOSSES
from grpo_lightning.config.schema import (
    WANDB_ONLY_FIELDS,
    ConfigError,
    DataConfig,
    GenerationConfig,
    GRPOConfig,
    LoRAConfig,
    RewardConfig,
    TrainConfig,
)

INSTALL_HINT = "pip install vllm (on a CUDA machine)"


def vllm_available() -> bool:
    """Whether ``import vllm`` would find a module, without paying for the import."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


LOGGER_KINDS = ("csv", "wandb", "none")


OVERLONG_PROMPTS = ("drop", "truncate")


PROFILERS = ("simple", "advanced", "pytorch")


DTYPES = ("float32", "bfloat16", "float16")


GENERATION_BACKENDS = ("auto", "loop", "hf", "vllm")


REWARD_NON_FINITE = ("error", "zero")


SHARDING_STRATEGIES = ("fsdp", "deepspeed_stage_3", "model_parallel")
"""Lightning strategy names (prefixes) that shard the weights; "deepspeed" alone is ZeRO-2."""


def shards_weights_by_name(strategy: str) -> bool:
    """Whether trainer.strategy names a strategy with sharded weights, for checks at load time.
    GRPOModule.setup decides from the running strategy (distributed.shards_weights), whatever it
    is called; this one names the fix before anything starts."""
    return strategy.startswith(SHARDING_STRATEGIES)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _set_fields(section: Any, names: Any) -> list[str]:
    """The fields among ``names`` of a config dataclass set to other than their defaults."""
    default = type(section)()
    return [name for name in names if getattr(section, name) != getattr(default, name)]


def _require_finite(cfg: Any, prefix: str = "") -> None:
    """Every float of the config (reward weights included) must be finite: an inf learning rate
    or a NaN weight would only surface steps later, as a non-finite metric."""
    items = (
        cfg.items()
        if isinstance(cfg, dict)
        else ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))
        if dataclasses.is_dataclass(cfg)
        else enumerate(cfg)
        if isinstance(cfg, (list, tuple))
        else ()
    )
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, float):
            _require(math.isfinite(value), f"{name} must be a finite number (got {value})")
        elif str(key).endswith("kwargs"):
            continue  # arguments of the user's own functions: theirs to check
        elif dataclasses.is_dataclass(value) or isinstance(value, (dict, list, tuple)):
            _require_finite(value, f"{name}.")


def validate_config(cfg: TrainConfig) -> None:
    """Check what types cannot: ranges and divisibility. Raises ConfigError naming the field."""
    alg, gen, data = cfg.algorithm, cfg.generation, cfg.data
    _require(
        alg.group_size >= 2,
        f"algorithm.group_size must be >= 2 to form a group baseline "
        f"(got {alg.group_size}); try algorithm.group_size=4",
    )
    _require(alg.clip_range > 0, f"algorithm.clip_range must be > 0 (got {alg.clip_range}); the usual value is 0.2")
    _require(alg.beta >= 0, f"algorithm.beta must be >= 0 (got {alg.beta}); 0 disables the KL term")
    _require(alg.entropy_coef >= 0, f"algorithm.entropy_coef must be >= 0 (got {alg.entropy_coef})")
    _require(alg.adv_eps >= 0, f"algorithm.adv_eps must be >= 0 (got {alg.adv_eps})")
    _require(alg.num_iterations >= 1, f"algorithm.num_iterations must be >= 1 (got {alg.num_iterations})")
    _require(
        alg.adv_estimator in ADV_ESTIMATORS,
        f"algorithm.adv_estimator={alg.adv_estimator!r} is unknown; choose one of {sorted(ADV_ESTIMATORS)}",
    )
    _require(
        alg.max_grad_norm is None or alg.max_grad_norm > 0,
        f"algorithm.max_grad_norm must be > 0 or null (got {alg.max_grad_norm})",
    )
    _validate_variant(alg, gen)
    _require(data.batch_size >= 1, f"data.batch_size must be >= 1 (got {data.batch_size})")
    _require(data.val_batch_size >= 1, f"data.val_batch_size must be >= 1 (got {data.val_batch_size})")
    rollout_size = data.batch_size * alg.group_size
    mini = alg.mini_batch_size or rollout_size
    _require(
        mini >= 1 and rollout_size % mini == 0,
        f"algorithm.mini_batch_size={alg.mini_batch_size} must divide the completions per step "
        f"(data.batch_size * algorithm.group_size = {rollout_size})",
    )
    micro = alg.micro_batch_size or mini
    _require(
        micro >= 1 and mini % micro == 0,
        f"algorithm.micro_batch_size={alg.micro_batch_size} must divide the mini-batch ({mini})",
    )
    _require(gen.max_new_tokens >= 1, f"generation.max_new_tokens must be >= 1 (got {gen.max_new_tokens})")
    _require(
        gen.temperature > 0,
        f"generation.temperature must be > 0 for sampling (got "
        f"{gen.temperature}); greedy validation is generation.val_do_sample=false",
    )
    _require(0 < gen.top_p <= 1, f"generation.top_p must be in (0, 1] (got {gen.top_p})")
    _require(
        gen.backend in GENERATION_BACKENDS,
        f"generation.backend={gen.backend!r} is unknown; choose one of {GENERATION_BACKENDS}",
    )
    if gen.backend == "vllm":
        _validate_vllm(cfg)
    else:  # accepted and then ignored, they would mislead
        unused = [
            f"generation.{name}" for name in _set_fields(gen, ("vllm_gpu_memory_utilization", "vllm_max_model_len"))
        ]
        _require(
            not unused,
            f"{', '.join(unused)} only applies with generation.backend=vllm (this run: "
            f"{gen.backend}); remove it or switch that on",
        )
    _require(gen.top_k >= 0, f"generation.top_k must be >= 0, 0 disables it (got {gen.top_k})")
    _require_finite(cfg)
    _require(cfg.optim.lr > 0, f"optim.lr must be > 0 (got {cfg.optim.lr})")
    _require(len(cfg.optim.betas) == 2, f"optim.betas must have two values (got {list(cfg.optim.betas)})")
    _require(
        all(0 <= beta < 1 for beta in cfg.optim.betas),
        f"optim.betas must be in [0, 1) (got {list(cfg.optim.betas)}); AdamW's usual values are [0.9, 0.999]",
    )
    _require(cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {cfg.optim.weight_decay})")
    _require(cfg.optim.eps > 0, f"optim.eps must be > 0 (got {cfg.optim.eps})")
    _require(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32) (got {cfg.seed})")
    _require(data.num_workers >= 0, f"data.num_workers must be >= 0 (got {data.num_workers})")
    _require(
        cfg.trainer.limit_val_batches is None or cfg.trainer.limit_val_batches >= 0,
        f"trainer.limit_val_batches must be >= 0 or null (got {cfg.trainer.limit_val_batches})",
    )
    _require(cfg.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0 (got {cfg.optim.warmup_steps})")
    _require(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r} is unknown; choose one of {DTYPES}")
    buckets = cfg.model.length_buckets
    _require(
        buckets is None or buckets >= 1,
        f"model.length_buckets must be >= 1 or null, 1 scores one padded block (got {buckets})",
    )
    _require(
        buckets in (None, 1) or not shards_weights_by_name(cfg.trainer.strategy),
        f"model.length_buckets={buckets} with trainer.strategy={cfg.trainer.strategy}: each process "
        "splits its own completions, and the sharded strategies need every process to make the same "
        "forward calls (else they wait on each other forever); set model.length_buckets=1 (or null)",
    )
    _require(
        cfg.model.logprob_chunk_size is None or cfg.model.logprob_chunk_size >= 1,
        f"model.logprob_chunk_size must be >= 1 or null for automatic (got {cfg.model.logprob_chunk_size})",
    )
    _require(
        not (cfg.model.share_prompts and cfg.model.gradient_checkpointing),
        "model.share_prompts=true needs the KV cache, which model.gradient_checkpointing=true "
        "switches off in training; set model.share_prompts=null (or false) to score full sequences",
    )
    _validate_lora(cfg.model.lora)
    _validate_data_source(data)
    _validate_validation_sampling(gen, cfg.reward)
    _require(
        len(cfg.reward.functions) > 0,
        "reward.functions is empty; add at least one reward function (see conf/reward/arithmetic.yaml)",
    )
    for name, spec in cfg.reward.functions.items():
        _require(
            name.isidentifier(),
            f"reward.functions.{name}: names must be identifiers "
            "(letters, digits, underscores), they become metric names",
        )
        _require(
            spec.fn != "" and "." in spec.fn,
            f"reward.functions.{name}.fn={spec.fn!r} must be an import path like package.module.function",
        )
    _require(cfg.trainer.max_steps >= 1, f"trainer.max_steps must be >= 1 (got {cfg.trainer.max_steps})")
    _require(
        cfg.trainer.val_every_n_steps >= 1,
        f"trainer.val_every_n_steps must be >= 1 (got {cfg.trainer.val_every_n_steps})",
    )
    _require(
        cfg.trainer.precision not in ("16-mixed", "16", "16-true"),
        f"trainer.precision={cfg.trainer.precision!r}: fp16 needs loss scaling, which the "
        "manual GRPO update does not do; use bf16-mixed or 32-true",
    )
    _require(
        cfg.checkpoint.every_n_steps >= 1, f"checkpoint.every_n_steps must be >= 1 (got {cfg.checkpoint.every_n_steps})"
    )
    _require(
        alg.max_consecutive_skips >= 0,
        f"algorithm.max_consecutive_skips must be >= 0 (got {alg.max_consecutive_skips})",
    )
    _require(
        cfg.reward.non_finite in REWARD_NON_FINITE,
        f"reward.non_finite={cfg.reward.non_finite!r} is unknown; choose one of {REWARD_NON_FINITE}",
    )
    _require(
        cfg.logger.kind in LOGGER_KINDS, f"logger.kind={cfg.logger.kind!r} is unknown; choose one of {LOGGER_KINDS}"
    )
    if cfg.logger.kind != "wandb":  # accepted and then ignored, they would mislead
        unused = [f"logger.{name}" for name in _set_fields(cfg.logger, WANDB_ONLY_FIELDS)]
        _require(
            not unused,
            f"{', '.join(unused)} only applies with logger=wandb (this run: "
            f"logger={cfg.logger.kind}); add logger=wandb or remove it",
        )
    _require(
        cfg.logger.log_completions_every >= 0,
        f"logger.log_completions_every must be >= 0, 0 disables it (got {cfg.logger.log_completions_every})",
    )
    _require(
        cfg.trainer.console_log_every_n_steps >= 0,
        f"trainer.console_log_every_n_steps must be >= 0, 0 silences it (got {cfg.trainer.console_log_every_n_steps})",
    )
    _require(
        cfg.trainer.profiler is None or cfg.trainer.profiler in PROFILERS,
        f"trainer.profiler={cfg.trainer.profiler!r} is unknown; choose one of {PROFILERS} or null",
    )
    _require(
        data.overfit_rows is None or data.overfit_rows >= data.batch_size,
        f"data.overfit_rows={data.overfit_rows} must be >= data.batch_size ({data.batch_size}) or null",
    )


def _validate_vllm(cfg: TrainConfig) -> None:
    gen, trainer = cfg.generation, cfg.trainer
    _require(
        vllm_available(),
        f"generation.backend=vllm needs vLLM, which is not installed: {INSTALL_HINT}; "
        "or sample in process with generation.backend=auto",
    )
    _require(
        trainer.accelerator not in ("cpu", "mps"),
        f"generation.backend=vllm runs on CUDA GPUs, not "
        f"trainer.accelerator={trainer.accelerator}; use trainer.accelerator=gpu, or generation.backend=auto",
    )
    _require(
        not shards_weights_by_name(trainer.strategy),
        f"generation.backend=vllm with trainer.strategy={trainer.strategy}: the weights are sharded and "
        "syncing them into vLLM would need a full gather, which is not implemented; use "
        "trainer.strategy=ddp (or auto), or generation.backend=auto",
    )
    _require(
        0 < gen.vllm_gpu_memory_utilization < 1,
        "generation.vllm_gpu_memory_utilization must be in "
        f"(0, 1) (got {gen.vllm_gpu_memory_utilization}); training needs the rest of the GPU",
    )
    longest_prompt = cfg.data.max_prompt_length or 1
    _require(
        gen.vllm_max_model_len is None or gen.vllm_max_model_len >= longest_prompt + gen.max_new_tokens,
        f"generation.vllm_max_model_len={gen.vllm_max_model_len} leaves no room for a prompt of "
        f"data.max_prompt_length={cfg.data.max_prompt_length} tokens and generation.max_new_tokens="
        f"{gen.max_new_tokens} new ones; raise it to their sum, or set it to null",
    )


def _validate_lora(lora: LoRAConfig) -> None:
    _require(lora.r >= 0, f"model.lora.r must be >= 0, 0 disables LoRA (got {lora.r})")
    _require(lora.alpha > 0, f"model.lora.alpha must be > 0 (got {lora.alpha})")
    _require(0 <= lora.dropout < 1, f"model.lora.dropout must be in [0, 1) (got {lora.dropout})")
    _require(
        lora.target_modules is None or len(lora.target_modules) > 0,
        "model.lora.target_modules is empty; list module names or use null for all linear layers",
    )
    unused = _set_fields(lora, [f.name for f in dataclasses.fields(LoRAConfig)]) if lora.r == 0 else []
    if unused:
        raise ConfigError(
            f"model.lora.{unused[0]} is set but model.lora.r=0 (full fine-tuning); set "
            "model.lora.r > 0 to train LoRA adapters"
        )


def _validate_data_source(data: DataConfig) -> None:
    _require(
        (data.builder is None) != (data.path is None),
        "set exactly one of data.builder and data.path (e.g. data=jsonl data.path=prompts.jsonl, "
        f"or data=arithmetic); got builder={data.builder!r}, path={data.path!r}",
    )
    _require(0 < data.val_fraction < 1, f"data.val_fraction must be in (0, 1) (got {data.val_fraction})")
    _require(
        data.max_val_prompts is None or data.max_val_prompts >= 1,
        f"data.max_val_prompts must be >= 1 or null (got {data.max_val_prompts})",
    )
    _require(
        data.max_prompt_length is None or data.max_prompt_length >= 1,
        f"data.max_prompt_length must be >= 1 or null (got {data.max_prompt_length})",
    )
    _require(
        data.overlong_prompts in OVERLONG_PROMPTS,
        f"data.overlong_prompts={data.overlong_prompts!r} is unknown; choose one of {OVERLONG_PROMPTS}",
    )
    _require(data.val_split is None or data.val_path is None, "set at most one of data.val_split and data.val_path")
    path_only = _set_fields(data, ("config_name", "split", "val_split", "val_path", "val_fraction", "answer_key"))
    if data.builder is not None and path_only:
        raise ConfigError(
            f"data.{path_only[0]} applies to data.path only; with data.builder={data.builder!r} "
            "the builder chooses the rows"
        )


def _validate_validation_sampling(gen: GenerationConfig, reward: RewardConfig) -> None:
    _require(gen.val_num_samples >= 1, f"generation.val_num_samples must be >= 1 (got {gen.val_num_samples})")
    _require(
        gen.val_num_samples == 1 or gen.val_do_sample,
        f"generation.val_num_samples={gen.val_num_samples} with greedy validation would repeat one "
        "completion; set generation.val_do_sample=true",
    )
    _require(
        gen.val_pass_reward is None or gen.val_pass_reward in reward.functions,
        f"generation.val_pass_reward={gen.val_pass_reward!r} is not among reward.functions "
        f"({sorted(reward.functions)})",
    )


def _validate_variant(alg: GRPOConfig, gen: GenerationConfig) -> None:
    """The GRPO-family options: names exist, ranges hold, and none is set where it has no effect."""
    _require(
        alg.policy_loss in POLICY_LOSSES,
        f"algorithm.policy_loss={alg.policy_loss!r} is unknown; choose one of {sorted(POLICY_LOSSES)}",
    )
    _require(
        alg.loss_agg in LOSS_AGGREGATIONS,
        f"algorithm.loss_agg={alg.loss_agg!r} is unknown; choose one of {sorted(LOSS_AGGREGATIONS)}",
    )
    _require(
        alg.kl_estimator in KL_ESTIMATORS,
        f"algorithm.kl_estimator={alg.kl_estimator!r} is unknown; choose one of {sorted(KL_ESTIMATORS)}",
    )
    _require(
        alg.scale_rewards is None or alg.scale_rewards in SCALE_REWARDS,
        f"algorithm.scale_rewards={alg.scale_rewards!r} is unknown; choose one of {list(SCALE_REWARDS)} or null",
    )
    if alg.adv_estimator in SELF_SCALED:
        _require(
            alg.scale_rewards is None,
            f"algorithm.scale_rewards={alg.scale_rewards!r} has no effect with "
            f"algorithm.adv_estimator={alg.adv_estimator}, which fixes its own scale; set "
            "algorithm.scale_rewards=null or use adv_estimator=grpo_vectorized",
        )
        _require(
            alg.normalize_by_std or alg.adv_estimator != "reinforce_pp",
            "algorithm.normalize_by_std=false has no effect with adv_estimator=reinforce_pp, which "
            "always whitens over the batch; use adv_estimator=dr_grpo for unscaled advantages",
        )
    else:
        _require(
            alg.scale_rewards != "group" or alg.normalize_by_std,
            "algorithm.scale_rewards=group contradicts algorithm.normalize_by_std=false; set one of them",
        )
    for name in ("clip_range_low", "clip_range_high"):
        value = getattr(alg, name)
        _require(value is None or value > 0, f"algorithm.{name} must be > 0 or null (got {value})")
    low = alg.clip_range if alg.clip_range_low is None else alg.clip_range_low
    _require(
        alg.policy_loss == "cispo" or low < 1,
        f"algorithm.clip_range_low must be < 1 (got {low}) so that 1 - clip_range_low stays a positive ratio",
    )
    if alg.clip_ratio_c is not None:
        _require(
            alg.policy_loss == "clip",
            f"algorithm.clip_ratio_c (dual-clip) only applies to "
            f"policy_loss=clip, not {alg.policy_loss!r}; set algorithm.clip_ratio_c=null",
        )
        _require(
            alg.clip_ratio_c > 1,
            f"algorithm.clip_ratio_c must be > 1 (got {alg.clip_ratio_c}); the dual-clip paper uses 3",
        )
    _require(0 < alg.gamma <= 1, f"algorithm.gamma must be in (0, 1] (got {alg.gamma})")
    _require(
        alg.beta == 0 or alg.kl_in_reward or alg.kl_estimator != "k1",
        "algorithm.kl_estimator=k1 in the loss regularizes nothing: its gradient, grad log pi, has expectation "
        "0 under the sampling policy. Use k3 (or k2) in the loss, or algorithm.kl_in_reward=true, where k1 is "
        "the usual choice (RLOO)",
    )
    _require(
        alg.beta > 0 or alg.kl_estimator == "k3",
        f"algorithm.kl_estimator={alg.kl_estimator} has no effect with algorithm.beta=0 (no KL term); "
        "set algorithm.beta > 0 or leave kl_estimator=k3",
    )
    _require(
        alg.beta > 0 or not alg.kl_in_reward,
        "algorithm.kl_in_reward=true has no effect with algorithm.beta=0; set algorithm.beta > 0",
    )
    _require(
        alg.filter_zero_std_groups or alg.max_generation_rounds is None,
        "algorithm.max_generation_rounds only applies with algorithm.filter_zero_std_groups=true; "
        "enable it or set max_generation_rounds=null",
    )
    _require(
        alg.max_generation_rounds is None or alg.max_generation_rounds >= 1,
        f"algorithm.max_generation_rounds must be >= 1 (got {alg.max_generation_rounds})",
    )
    if alg.overlong_buffer_frac is None:
        _require(
            alg.overlong_penalty_factor == 1.0,
            "algorithm.overlong_penalty_factor has no effect "
            "without algorithm.overlong_buffer_frac; set it (DAPO uses 0.2)",
        )
    else:
        _require(
            0 < alg.overlong_buffer_frac <= 1,
            f"algorithm.overlong_buffer_frac must be in (0, 1] (got {alg.overlong_buffer_frac})",
        )
        _require(
            alg.overlong_penalty_factor >= 0,
            f"algorithm.overlong_penalty_factor must be >= 0 (got {alg.overlong_penalty_factor})",
        )
