"""The checks a group cannot make of its own fields, and validate_config, which runs every check.

Where each kind of check lives:
  - a group's own fields (ranges, allowed values, finite numbers, an option set where it has no
    effect within the group): the group's ``validate()`` method, in schema.py (algorithm,
    generation, optim, model) and train_schema.py (data, reward, trainer, checkpoint, logger;
    ``TrainConfig.validate`` runs them all, then checks ``seed``);
  - names looked up in a registry of another layer (grpo_lightning.algo), which the schemas, a
    leaf, cannot import: :func:`validate_registry_names`, here;
  - constraints that span groups, and vLLM's presence for generation.backend=vllm:
    :func:`validate_across_groups`, here.

:func:`validate_config` runs the registry names first (a name the registry does not know is
reported as unknown, not as an option without effect), then every group's own checks, then the
checks across groups, which may therefore take each group's own fields as valid. Each check
raises a ConfigError that names the field and the fix, when the config is loaded (loading.py)."""

from __future__ import annotations

import importlib.util
import sys

from grpo_lightning.algo.advantages import ADV_ESTIMATORS, PER_REWARD, SCALE_REWARDS, SELF_SCALED, TOKEN_ADVANTAGES
from grpo_lightning.algo.correction import ROLLOUT_CORRECTIONS
from grpo_lightning.algo.dynamic_sampling import FILTER_GROUPS_TOTALS
from grpo_lightning.algo.kl import KL_ESTIMATORS
from grpo_lightning.algo.losses import LOSS_AGGREGATIONS, POLICY_LOSSES
from grpo_lightning.config.schema import GRPOConfig, _require
from grpo_lightning.config.train_schema import DataConfig, TrainConfig

INSTALL_HINT = "pip install vllm (on a CUDA machine)"


def vllm_available() -> bool:
    """Whether ``import vllm`` would find a module, without paying for the import."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


SHARDING_STRATEGIES = ("fsdp", "deepspeed_stage_3", "model_parallel")
"""Lightning strategy names (prefixes) that shard the weights; "deepspeed" alone is ZeRO-2."""


def shards_weights_by_name(strategy: str) -> bool:
    """Whether trainer.strategy names a strategy with sharded weights, for checks at load time.
    GRPOModule.setup decides from the running strategy (distributed.shards_weights), whatever it
    is called; this one names the fix before anything starts."""
    return strategy.startswith(SHARDING_STRATEGIES)


def validate_config(cfg: TrainConfig) -> None:
    """Check what types cannot: ranges, allowed values, divisibility, options that contradict each
    other or have no effect. Raises ConfigError naming the field and the fix."""
    validate_registry_names(cfg.algorithm)
    cfg.validate()
    validate_across_groups(cfg)


def validate_registry_names(alg: GRPOConfig) -> None:
    """The algorithm's options that name an entry of a registry in grpo_lightning.algo, and those
    whose effect depends on the entry (an estimator that fixes its own scale ignores scale_rewards)."""
    _require(
        alg.adv_estimator in ADV_ESTIMATORS,
        f"algorithm.adv_estimator={alg.adv_estimator!r} is unknown; choose one of {sorted(ADV_ESTIMATORS)}",
    )
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
        alg.rollout_correction is None or alg.rollout_correction in ROLLOUT_CORRECTIONS,
        f"algorithm.rollout_correction={alg.rollout_correction!r} is unknown; choose one of "
        f"{sorted(ROLLOUT_CORRECTIONS)} or null",
    )
    _require(
        alg.token_advantage in TOKEN_ADVANTAGES,
        f"algorithm.token_advantage={alg.token_advantage!r} is unknown; choose one of {sorted(TOKEN_ADVANTAGES)}",
    )
    _require(
        alg.scale_rewards is None or alg.scale_rewards in SCALE_REWARDS,
        f"algorithm.scale_rewards={alg.scale_rewards!r} is unknown; choose one of {list(SCALE_REWARDS)} or null",
    )
    if alg.adv_estimator in PER_REWARD:
        _require(
            alg.overlong_buffer_frac is None and not alg.kl_in_reward,
            f"algorithm.adv_estimator={alg.adv_estimator} normalizes each reward function on its own, and the "
            "overlong penalty (overlong_buffer_frac) and the KL in the reward (kl_in_reward) are not reward "
            "functions; use the length_penalty reward function (grpo_lightning.rewards.length) or keep the KL in "
            "the loss",
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


def validate_across_groups(cfg: TrainConfig) -> None:
    """Constraints between groups: the completions per step divide into mini- and micro-batches,
    vLLM is installed and fits the trainer and the prompt length, length buckets agree with the
    strategy, and the reward that judges validation passes exists. Run after every group's own
    checks, so each group's fields are valid on their own."""
    alg, gen, data, trainer = cfg.algorithm, cfg.generation, cfg.data, cfg.trainer
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
    _require(
        len(cfg.reward.functions) > 0 or cfg.agent.environment is not None,
        "reward.functions is empty; add at least one reward function (see conf/reward/arithmetic.yaml), or "
        "set agent.environment to an environment whose get_reward() gives the reward",
    )
    if cfg.agent.enabled:
        cfg.agent.check_generation(gen)
        _require(
            cfg.model.builder is None,
            "agent.tools / agent.environment need a language-model policy (model.name_or_path): multi-turn "
            "episodes are conversations rendered by its chat template; model.builder builds another kind",
        )
        _require(
            data.apply_chat_template,
            "agent.tools / agent.environment render each prompt with the tokenizer's chat template (with the "
            "tools' schemas, after the environment's first observation); set data.apply_chat_template=true",
        )
    if gen.backend == "vllm":
        _validate_vllm(cfg)
    buckets = cfg.model.length_buckets
    _require(
        buckets in (None, 1) or not shards_weights_by_name(trainer.strategy),
        f"model.length_buckets={buckets} with trainer.strategy={trainer.strategy}: each process "
        "splits its own completions, and the sharded strategies need every process to make the same "
        "forward calls (else they wait on each other forever); set model.length_buckets=1 (or null)",
    )
    slimmed = [
        f"checkpoint.{name}=false"
        for name in ("save_frozen_weights", "save_optimizer_state")
        if not getattr(cfg.checkpoint, name)
    ]
    _require(
        not slimmed or not trainer.strategy.startswith(("fsdp", "deepspeed", "model_parallel")),
        f"{' and '.join(slimmed)} with trainer.strategy={trainer.strategy}: that strategy writes its "
        "own (sharded) checkpoints, which these options cannot trim; leave them true there",
    )
    _require(
        alg.filter_groups_by in FILTER_GROUPS_TOTALS or alg.filter_groups_by in cfg.reward.functions,
        f"algorithm.filter_groups_by={alg.filter_groups_by!r} is neither {' nor '.join(FILTER_GROUPS_TOTALS)} "
        f"nor a reward function ({sorted(cfg.reward.functions)}); name the function that scores correctness "
        "for DAPO's 0 < #correct < G",
    )
    _require(
        not (alg.filter_zero_std_groups and alg.filter_groups_by in FILTER_GROUPS_TOTALS)
        or alg.filter_groups_by not in cfg.reward.functions,
        f"algorithm.filter_groups_by={alg.filter_groups_by!r} names both a total and a reward function of that "
        "name; rename the function under reward.functions",
    )
    one_pass = alg.num_iterations == 1 and mini == rollout_size and gen.max_staleness == 0
    _require(
        alg.policy_loss != "kl_cov" or not one_pass,
        "algorithm.policy_loss=kl_cov penalizes |log ratio|, which is 0 with one pass over one mini-batch "
        "(the ratio is 1): set algorithm.num_iterations=2 or a smaller algorithm.mini_batch_size, as the kl_cov "
        "preset does",
    )
    _require(
        alg.top_entropy_quantile is None or alg.policy_loss != "gmpo",
        "algorithm.top_entropy_quantile with policy_loss=gmpo: GMPO's geometric mean couples every token of a "
        "sequence, so dropping tokens' advantages would not drop their gradient; use one of them",
    )
    if cfg.model.builder is not None:
        text_only = [
            name
            for name in ("apply_chat_template", "system_prompt", "max_prompt_length", "overlong_prompts")
            if getattr(data, name) != getattr(DataConfig(), name)
        ]
        _require(
            not text_only,
            f"data.{', data.'.join(text_only)} format text prompts for a tokenizer, and model.builder="
            f"{cfg.model.builder} builds a policy whose prompts are not formatted; leave them at their defaults",
        )
    if gen.max_staleness > 0:
        _require(
            not alg.filter_zero_std_groups,
            "generation.max_staleness > 0 with algorithm.filter_zero_std_groups=true: dynamic sampling decides "
            "how many rounds a step draws from its rewards, which asynchronous rollouts cannot know ahead; "
            "use one of them",
        )
        _require(
            not shards_weights_by_name(trainer.strategy) and cfg.model.builder is None,
            f"generation.max_staleness > 0 needs a causal LM with whole weights on each process (a snapshot per "
            f"step in flight); not trainer.strategy={trainer.strategy} or model.builder",
        )
    if alg.ref_update_every is not None:
        _require(
            cfg.model.lora.r == 0,
            "algorithm.ref_update_every with LoRA (model.lora.r > 0): the reference is the base model itself, "
            "which a refresh would overwrite; train without LoRA, or keep the reference frozen",
        )
        _require(
            cfg.checkpoint.save_frozen_weights,
            "algorithm.ref_update_every with checkpoint.save_frozen_weights=false: a resume would rebuild the "
            "reference as the initial policy, not the refreshed one; keep save_frozen_weights=true",
        )
    _require(
        gen.val_pass_reward is None or gen.val_pass_reward in cfg.reward.functions,
        f"generation.val_pass_reward={gen.val_pass_reward!r} is not among reward.functions "
        f"({sorted(cfg.reward.functions)})",
    )


def _validate_vllm(cfg: TrainConfig) -> None:
    """generation.backend=vllm: vLLM is installed, and fits trainer and data. Its own field
    (vllm_gpu_memory_utilization) is checked by GenerationConfig.validate."""
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
    longest_prompt = cfg.data.max_prompt_length or 1
    _require(
        gen.vllm_max_model_len is None or gen.vllm_max_model_len >= longest_prompt + gen.max_new_tokens,
        f"generation.vllm_max_model_len={gen.vllm_max_model_len} leaves no room for a prompt of "
        f"data.max_prompt_length={cfg.data.max_prompt_length} tokens and generation.max_new_tokens="
        f"{gen.max_new_tokens} new ones; raise it to their sum, or set it to null",
    )
