"""Config composition: typed schema, defaults, and clear errors naming the field.

GRPO-family options: unknown names and options that the chosen variant would ignore fail at load.
Each group's validate() checks its own fields on its own; validate_config adds the registry names
and the checks across groups; the schema modules load nothing else of the package."""

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import grpo_lightning.config as config_package
from grpo_lightning.config import ConfigError, TrainConfig, to_train_config
from grpo_lightning.run.train import load_config


def _validate(cfg):
    to_train_config(cfg)


def test_default_config_composes_with_documented_keys(compose_config):
    cfg = compose_config()
    _validate(cfg)
    for key in [
        "algorithm.group_size",
        "algorithm.clip_range",
        "algorithm.beta",
        "algorithm.entropy_coef",
        "algorithm.normalize_by_std",
        "algorithm.num_iterations",
        "algorithm.mini_batch_size",
        "algorithm.max_grad_norm",
        "data.batch_size",
        "generation.max_new_tokens",
        "generation.temperature",
        "generation.top_p",
        "generation.top_k",
        "optim.lr",
        "seed",
        "trainer.max_steps",
    ]:
        OmegaConf.select(cfg, key, throw_on_missing=True)  # raises if the key is absent
    assert isinstance(OmegaConf.to_object(cfg), TrainConfig)


def test_algorithm_presets_carry_their_papers_settings():
    """conf/algorithm/grpo.yaml carries the project's GRPO defaults (a contract); arithmetic.yaml
    (the default) adapts it to the task; the other presets carry their papers' defining keys and
    are not overridden by config.yaml."""
    from grpo_lightning.config import to_train_config

    def algorithm(*overrides):
        return to_train_config(
            load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", *overrides])
        ).algorithm

    grpo = algorithm("algorithm=grpo")
    assert (
        grpo.group_size,
        grpo.clip_range,
        grpo.beta,
        grpo.entropy_coef,
        grpo.normalize_by_std,
        grpo.num_iterations,
        grpo.kl_estimator,
        grpo.loss_agg,
    ) == (4, 0.2, 0.01, 0.01, True, 1, "k3", "seq-mean-token-mean")
    default = algorithm()
    assert (default.group_size, default.beta, default.entropy_coef, default.clip_range) == (8, 0.0, 0.0, 0.2)
    dapo = algorithm("algorithm=dapo")
    assert (
        dapo.group_size,
        dapo.clip_range_low,
        dapo.clip_range_high,
        dapo.loss_agg,
        dapo.beta,
        dapo.filter_zero_std_groups,
        dapo.overlong_buffer_frac,
    ) == (16, 0.2, 0.28, "token-mean", 0.0, True, 0.2)
    dr = algorithm("algorithm=dr_grpo")
    assert (dr.adv_estimator, dr.loss_agg, dr.beta) == ("dr_grpo", "seq-mean-token-sum-norm", 0.0)
    gspo = algorithm("algorithm=gspo")
    assert (gspo.policy_loss, gspo.clip_range_low, gspo.clip_range_high) == ("gspo", 3e-4, 4e-4)
    rloo = algorithm("algorithm=rloo")
    assert (rloo.adv_estimator, rloo.kl_in_reward, rloo.kl_estimator, rloo.group_size) == ("rloo", True, "k1", 4)


def test_the_default_tasks_settings_come_with_its_groups_only():
    """The embedded default's batch size, completion length, run length and algorithm preset come
    with data=arithmetic, its learning rate with model=arith_policy: a run on other data or
    another model starts from the groups' own defaults, and algorithm=... still wins."""

    def settings(*overrides):
        cfg = to_train_config(load_config(["output_dir=/tmp/unused", *overrides]))
        return (
            cfg.algorithm.group_size,
            cfg.algorithm.beta,
            cfg.data.batch_size,
            cfg.generation.max_new_tokens,
            cfg.optim.lr,
            cfg.trainer.max_steps,
        )

    assert settings() == (8, 0.0, 32, 4, 3e-4, 60)
    assert settings("data=jsonl", "data.path=train.jsonl") == (4, 0.01, 8, 8, 3e-4, 100)
    assert settings("model=hf", "model.name_or_path=some/model") == (8, 0.0, 32, 4, 1e-6, 60)
    assert settings("model=hf", "model.name_or_path=some/model", "data=hf", "data.path=some/data") == (
        4,
        0.01,
        8,
        8,
        1e-6,
        100,
    )
    assert settings("algorithm=dapo")[:2] == (16, 0.0)
    assert settings("algorithm=grpo")[:2] == (4, 0.01)


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm.foo=1", "algorithm.foo"),
        ("algorithm.group_size=abc", "group_size"),
        ("generation.top_k=1.5", "top_k"),
    ],
)
def test_unknown_keys_and_wrong_types_fail_at_load(compose_config, override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(override)
    assert message in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize(
    "override, message",
    [
        ("+algorithm.foo=1", "unknown config key(s): algorithm.foo"),
        ("+reward.functions.correct.wieght=2", "unknown config key(s): reward.functions.correct.wieght"),
        ("reward.functions.correct.weight=abc", "reward.functions.correct.weight must be a number (got 'abc')"),
        (
            "+reward.functions.fmt={weight:2}",
            "reward.functions.fmt.fn must be the import path of the function (got None)",
        ),
        (
            "+reward.functions.fmt=3",
            "reward.functions.fmt=3 must be a mapping with the keys ['fn', 'weight', 'kwargs']",
        ),
        ("+reward.functions.fmt={fn:a.b,kwargs:3}", "reward.functions.fmt.kwargs must be a mapping"),
        ("algorithm.group_size=1", "algorithm.group_size must be >= 2"),
        ("algorithm.clip_range=-0.1", "algorithm.clip_range must be > 0"),
        ("algorithm.beta=-1", "algorithm.beta must be >= 0"),
        ("algorithm.mini_batch_size=5", "algorithm.mini_batch_size=5 must divide"),
        ("algorithm.micro_batch_size=3", "algorithm.micro_batch_size=3 must divide"),
        ("algorithm.adv_estimator=nope", "algorithm.adv_estimator='nope' is unknown"),
        ("generation.max_new_tokens=0", "generation.max_new_tokens must be >= 1"),
        ("generation.temperature=0", "generation.temperature must be > 0"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("model.dtype=float64", "model.dtype='float64' is unknown"),
        ("trainer.precision=16-mixed", "trainer.precision='16-mixed'"),
        ("optim.lr=inf", "optim.lr must be a finite number (got inf)"),
        (
            "generation.vllm_max_model_len=512",
            "generation.vllm_max_model_len only applies with generation.backend=vllm (this run: auto)",
        ),
        ("reward.functions.correct.weight=nan", "reward.functions.correct.weight must be a finite number (got nan)"),
        ("generation.temperature=inf", "generation.temperature must be a finite number (got inf)"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        ("optim.betas=[1.5,0.9]", "optim.betas must be in [0, 1)"),
        ("optim.eps=0", "optim.eps must be > 0"),
        ("seed=-1", "seed must be in [0, 2**32)"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("trainer.limit_val_batches=-1", "trainer.limit_val_batches must be >= 0 or null"),
        ("logger.project=mine", "logger.project only applies with logger=wandb (this run: logger=csv)"),
        ("logger.log_completions_every=5", "logger.log_completions_every only applies with logger=wandb"),
    ],
)
def test_bad_values_name_the_field(compose_config, override, message):
    cfg = compose_config(override)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _validate(cfg)


TOOL = "agent.tools=[tests.policy.test_agent.multiply]"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ((TOOL, "agent.max_turns=0"), "agent.max_turns must be >= 1 (got 0)"),
        ((TOOL, "agent.max_tool_calls=0"), "agent.max_tool_calls must be >= 1 (got 0)"),
        ((TOOL, "agent.max_tokens_per_turn=0"), "agent.max_tokens_per_turn must be >= 1 or null (got 0)"),
        ((TOOL, "agent.max_total_tokens=0"), "agent.max_total_tokens must be >= 1 or null (got 0)"),
        ((TOOL, "agent.tool_timeout_s=0"), "agent.tool_timeout_s must be > 0 seconds (got 0.0)"),
        ((TOOL, "agent.tool_workers=0"), "agent.tool_workers must be >= 1 (got 0)"),
        ((TOOL, "agent.environment_reward_weight=nan"), "agent.environment_reward_weight must be finite (got nan)"),
        ((TOOL, "agent.tool_call_format=xml"), "agent.tool_call_format='xml' is unknown"),
        ((TOOL,), "set data.apply_chat_template=true"),
        ((TOOL, "data.apply_chat_template=true", "generation.backend=vllm"), "with generation.backend=vllm"),
        ((TOOL, "data.apply_chat_template=true", "generation.max_staleness=1"), "generation.max_staleness > 0"),
        ((TOOL, "data.apply_chat_template=true", "model=gaussian"), "model.builder builds another kind"),
        (("reward=environment",), "reward.functions is empty"),
    ],
)
def test_bad_agent_settings_name_the_field(compose_config, overrides, message):
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _validate(cfg)


def test_a_reward_function_can_be_added_from_the_command_line(compose_config):
    from grpo_lightning.config import RewardFunctionConfig, to_train_config
    from grpo_lightning.rewards import WeightedReward

    cfg = to_train_config(
        compose_config(
            "+reward.functions.length={fn:grpo_lightning.rewards.length.length_penalty,weight:0.2,"
            "kwargs:{max_length:4,cache_length:2}}"
        )
    )
    assert cfg.reward.functions["length"] == RewardFunctionConfig(
        fn="grpo_lightning.rewards.length.length_penalty", weight=0.2, kwargs={"max_length": 4, "cache_length": 2}
    )
    assert isinstance(cfg.reward.functions["correct"], RewardFunctionConfig)
    # Values are taken as written once Hydra has resolved them: no second round of interpolation.
    literal = to_train_config(compose_config("+reward.functions.correct.kwargs.pattern='\\${not_a_key}'"))
    assert literal.reward.functions["correct"].kwargs == {"pattern": "${not_a_key}"}
    reward = WeightedReward.from_config(cfg.reward)
    assert reward.names == ["correct", "length"]
    scores = reward(["1+1="], ["2<eos>long"], {"answer": ["2"]})
    assert set(scores.per_function) == {"correct", "length"}


def test_reward_functions_set_as_dataclasses_in_python_load(compose_config):
    from grpo_lightning.config import RewardFunctionConfig

    cfg = compose_config()
    cfg.reward.functions.correct = RewardFunctionConfig(
        fn="grpo_lightning.data.tasks.arithmetic.correct_answer", weight=2
    )
    assert to_train_config(cfg).reward.functions["correct"].weight == 2.0


def test_run_labels_pass_with_any_logger(compose_config):
    """logger.group and logger.tags label the run under every logger (experiment overlays set
    them); the W&B-only fields pass with logger=wandb."""
    _validate(compose_config("experiment=arith_kl"))
    _validate(compose_config("logger=wandb", "logger.project=mine", "logger.offline=true"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("algorithm.policy_loss=nope", "algorithm.policy_loss='nope' is unknown"),
        ("algorithm.loss_agg=nope", "algorithm.loss_agg='nope' is unknown"),
        ("algorithm.kl_estimator=k9", "algorithm.kl_estimator='k9' is unknown"),
        ("algorithm.scale_rewards=std", "algorithm.scale_rewards='std' is unknown"),
        ("algorithm=rloo algorithm.scale_rewards=group", "has no effect with algorithm.adv_estimator=rloo"),
        ("algorithm.scale_rewards=group algorithm.normalize_by_std=false", "contradicts"),
        ("algorithm.clip_ratio_c=0.5", "algorithm.clip_ratio_c must be > 1"),
        ("algorithm=gspo algorithm.clip_ratio_c=3", "only applies to policy_loss=clip"),
        ("algorithm.kl_estimator=k1", "has no effect with algorithm.beta=0"),
        ("algorithm.kl_estimator=k1 algorithm.beta=0.04", "algorithm.kl_estimator=k1 in the loss regularizes nothing"),
        ("algorithm.kl_in_reward=true", "kl_in_reward=true has no effect with algorithm.beta=0"),
        ("algorithm.max_generation_rounds=5", "only applies with algorithm.filter_zero_std_groups"),
        ("algorithm.overlong_penalty_factor=2", "has no effect without algorithm.overlong_buffer_frac"),
        ("algorithm.gamma=0", "algorithm.gamma must be in (0, 1]"),
        ("algorithm.token_advantage=returns", "algorithm.token_advantage='returns' is unknown"),
        ("algorithm.rollout_correction=nope", "algorithm.rollout_correction='nope' is unknown"),
        ("algorithm=dapo algorithm.adv_estimator=gdpo", "the overlong penalty"),
        ("algorithm.target_entropy=-1", "algorithm.target_entropy must be >= 0"),
        ("algorithm=kl_cov algorithm.micro_batch_size=2", "select tokens over the whole mini-batch"),
        ("algorithm.policy_loss=kl_cov", "which is 0 with one pass over one mini-batch"),
        ("algorithm=gmpo algorithm.top_entropy_quantile=0.2", "GMPO's geometric mean couples every token"),
        ("algorithm.rollout_is_cap=3", "algorithm.rollout_is_cap=3.0 has no effect"),
        ("algorithm.rollout_correction=seq_mask", "needs algorithm.rollout_seq_kl_threshold"),
        ("algorithm.sapo_temperature_neg=2", "algorithm.sapo_temperature_neg=2.0 has no effect"),
        ("algorithm.policy_loss=clip_cov algorithm.clip_cov_lb=6", "clip_cov_lb must be below"),
        ("algorithm.rollout_correction=icepop algorithm.rollout_mask_low=1.5", "0 <= low < 1 < high"),
        ("algorithm.filter_groups_by=correct", "only applies with algorithm.filter_zero_std_groups=true"),
        ("algorithm=dapo algorithm.filter_groups_by=accuracy", "is neither shaped_reward nor reward nor a reward"),
        ("algorithm=dapo reward.functions.correct.weight=1 +reward.functions.reward.fn=x.y", "names both a total"),
    ],
)
def test_variant_options_are_checked(overrides, message):
    cfg = load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", *overrides.split()])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        to_train_config(cfg)


@pytest.mark.parametrize(
    "preset",
    ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "cispo", "sapo", "gmpo", "gdpo", "clip_cov", "kl_cov", "arithmetic"],
)
def test_every_preset_validates(preset):
    to_train_config(load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", f"algorithm={preset}"]))


@pytest.mark.parametrize(
    "preset", ["dr_grpo", "dapo", "gspo", "rloo", "cispo", "sapo", "gmpo", "gdpo", "clip_cov", "kl_cov"]
)
def test_presets_of_papers_without_an_entropy_bonus_have_none(preset):
    cfg = to_train_config(load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", f"algorithm={preset}"]))
    assert cfg.algorithm.entropy_coef == 0.0


def test_dapo_filters_on_accuracy_and_cispo_has_the_papers_bounds():
    """DAPO keeps 0 < #correct < G, judged before the overlong penalty; CISPO sets no lower bound
    on the importance weight (1 - clip_range_low = 0) and caps it above."""

    def preset(name):
        return to_train_config(
            load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", f"algorithm={name}"])
        )

    assert preset("dapo").algorithm.filter_groups_by == "reward"
    cispo = preset("cispo").algorithm
    assert (cispo.policy_loss, cispo.clip_range_low, cispo.clip_range_high) == ("cispo", 1.0, 4.0)
    assert (cispo.loss_agg, cispo.beta) == ("token-mean", 0.0)


# -- each group checks its own fields; validate_config adds registry names and cross-group checks --


def _valid_train_config(**groups):
    """A TrainConfig that passes validate_config: the groups' defaults plus the choices that have
    none (a data source, a reward function), with ``groups`` replacing whole groups."""
    from grpo_lightning.config import DataConfig, RewardConfig, RewardFunctionConfig

    defaults = dict(
        data=DataConfig(path="prompts.jsonl"),
        reward=RewardConfig(functions={"ok": RewardFunctionConfig(fn="my_module.reward")}),
    )
    return TrainConfig(output_dir="/tmp/unused", **{**defaults, **groups})


def _bad_groups():
    """(group, the one message its validate() raises) for one bad field each."""
    from grpo_lightning import config as c

    ok = {"ok": c.RewardFunctionConfig(fn="my_module.reward")}
    return [
        (c.GRPOConfig(group_size=1), "algorithm.group_size must be >= 2 to form a group baseline (got 1)"),
        (c.GRPOConfig(entropy_coef=math.inf), "algorithm.entropy_coef must be a finite number (got inf)"),
        (c.GRPOConfig(beta=0.0, kl_in_reward=True), "algorithm.kl_in_reward=true has no effect with algorithm.beta=0"),
        (
            c.GRPOConfig(clip_ratio_c=3.0, policy_loss="gspo"),
            "algorithm.clip_ratio_c (dual-clip) only applies to policy_loss=clip",
        ),
        (c.GenerationConfig(top_p=0.0), "generation.top_p must be in (0, 1] (got 0.0)"),
        (
            c.GenerationConfig(vllm_max_model_len=512),
            "generation.vllm_max_model_len only applies with generation.backend=vllm (this run: auto)",
        ),
        (c.GenerationConfig(val_num_samples=4), "generation.val_num_samples=4 with greedy validation"),
        (c.OptimConfig(betas=[0.9]), "optim.betas must have two values (got [0.9])"),
        (c.OptimConfig(lr=math.nan), "optim.lr must be a finite number (got nan)"),
        (c.LoRAConfig(alpha=32.0), "model.lora.alpha is set but model.lora.r=0"),
        (c.LoRAConfig(r=8, dropout=1.0), "model.lora.dropout must be in [0, 1) (got 1.0)"),
        (c.ModelConfig(dtype="float64"), "model.dtype='float64' is unknown"),
        (c.ModelConfig(share_prompts=True, gradient_checkpointing=True), "model.share_prompts=true needs the KV cache"),
        (c.ModelConfig(lora=c.LoRAConfig(r=-1)), "model.lora.r must be >= 0, 0 disables LoRA (got -1)"),
        (c.DataConfig(path="a.jsonl", overlong_prompts="cut"), "data.overlong_prompts='cut' is unknown"),
        (c.DataConfig(builder="m.f", answer_key="answer"), "data.answer_key applies to data.path only"),
        (c.DataConfig(path="a.jsonl", val_fraction=math.inf), "data.val_fraction must be a finite number (got inf)"),
        (
            c.RewardConfig(functions={"ok": c.RewardFunctionConfig(fn="m.f", weight=math.nan)}),
            "reward.functions.ok.weight must be a finite number (got nan)",
        ),
        (c.RewardConfig(functions=ok, non_finite="ignore"), "reward.non_finite='ignore' is unknown"),
        (c.TrainerConfig(precision="16-mixed"), "trainer.precision='16-mixed': fp16 needs loss scaling"),
        (c.TrainerConfig(profiler="nope"), "trainer.profiler='nope' is unknown; choose one of"),
        (c.CheckpointConfig(every_n_steps=0), "checkpoint.every_n_steps must be >= 1 (got 0)"),
        (c.LoggerConfig(project="mine"), "logger.project only applies with logger=wandb (this run: logger=csv)"),
        (c.LoggerConfig(kind="tensorboard"), "logger.kind='tensorboard' is unknown"),
        (_valid_train_config(seed=-1), "seed must be in [0, 2**32) (got -1)"),
        (_valid_train_config(optim=c.OptimConfig(eps=0.0)), "optim.eps must be > 0 (got 0.0)"),
    ]


def _field_named(message: str) -> str:
    """The field a message starts with, as a test id."""
    return message.split()[0].split("=")[0]


@pytest.mark.parametrize(
    "group, message", [pytest.param(group, message, id=_field_named(message)) for group, message in _bad_groups()]
)
def test_each_group_checks_its_own_fields(group, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        group.validate()


def test_every_schema_has_a_validate_method():
    from grpo_lightning.config import schema, train_schema

    classes = [
        value
        for module in (schema, train_schema)
        for value in vars(module).values()
        if dataclasses.is_dataclass(value) and value.__module__ == module.__name__
    ]
    # RewardFunctionConfig is checked by RewardConfig, which names the entry.
    missing = [
        cls.__name__ for cls in classes if "validate" not in vars(cls) and cls.__name__ != "RewardFunctionConfig"
    ]
    assert len(classes) == 13 and missing == []


@pytest.mark.parametrize(
    "name",
    [
        "GRPOConfig",
        "GenerationConfig",
        "OptimConfig",
        "LoRAConfig",
        "ModelConfig",
        "TrainerConfig",
        "CheckpointConfig",
        "LoggerConfig",
    ],
)
def test_a_default_group_validates(name):
    import grpo_lightning.config as config

    getattr(config, name)().validate()  # ModelConfig's name_or_path is MISSING by design; not checked here


def test_groups_without_a_default_choice_ask_for_it():
    """A data source and a reward function have no default: the default groups name what is missing,
    and validate once it is given."""
    from grpo_lightning.config import DataConfig, RewardConfig, RewardFunctionConfig, validate_config

    with pytest.raises(ConfigError, match="set exactly one of data.builder and data.path"):
        DataConfig().validate()
    empty_reward = _valid_train_config()
    empty_reward.reward = RewardConfig()
    with pytest.raises(ConfigError, match="reward.functions is empty"):
        validate_config(empty_reward)
    with pytest.raises(ConfigError, match="set exactly one of data.builder and data.path"):
        TrainConfig().validate()
    DataConfig(path="prompts.jsonl").validate()
    RewardConfig(functions={"ok": RewardFunctionConfig(fn="my_module.reward")}).validate()
    _valid_train_config().validate()
    validate_config(_valid_train_config())


def _left_to_validate_config():
    """(groups that pass their own validate(), what validate_config refuses in them)."""
    from grpo_lightning import config as c

    return [
        ({"algorithm": c.GRPOConfig(mini_batch_size=5)}, "algorithm.mini_batch_size=5 must divide the completions"),
        ({"algorithm": c.GRPOConfig(adv_estimator="nope")}, "algorithm.adv_estimator='nope' is unknown"),
        ({"algorithm": c.GRPOConfig(policy_loss="nope")}, "algorithm.policy_loss='nope' is unknown"),
        (
            {"generation": c.GenerationConfig(val_pass_reward="nope")},
            "generation.val_pass_reward='nope' is not among reward.functions (['ok'])",
        ),
        (
            {"model": c.ModelConfig(length_buckets=4), "trainer": c.TrainerConfig(strategy="fsdp")},
            "model.length_buckets=4 with trainer.strategy=fsdp",
        ),
    ]


@pytest.mark.parametrize(
    "groups, message",
    [pytest.param(groups, message, id=_field_named(message)) for groups, message in _left_to_validate_config()],
)
def test_registry_names_and_cross_group_checks_are_left_to_validate_config(groups, message):
    """validate() checks one group's own fields; a name only a registry knows, or a constraint
    between groups, passes it and is refused by validate_config."""
    from grpo_lightning.config import validate_config

    cfg = _valid_train_config(**groups)
    cfg.validate()
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


def test_registry_names_are_checked_before_the_groups_own_fields():
    """An unknown KL estimator is reported as unknown, not as an estimator without effect at beta=0
    (GRPOConfig.validate alone cannot tell the two apart)."""
    from grpo_lightning.config import GRPOConfig, validate_config

    algorithm = GRPOConfig(beta=0.0, kl_estimator="k9")
    with pytest.raises(ConfigError, match="algorithm.kl_estimator=k9 has no effect with algorithm.beta=0"):
        algorithm.validate()
    with pytest.raises(ConfigError, match="algorithm.kl_estimator='k9' is unknown"):
        validate_config(_valid_train_config(algorithm=algorithm))


def test_the_schema_modules_load_nothing_else_of_the_package():
    """schema.py is a leaf and train_schema.py depends on it alone: loaded in a fresh interpreter
    (with the packages above them as empty stand-ins, whose __init__ would load everything), they
    bring in no other grpo_lightning module."""
    package = Path(config_package.__file__).parent
    probe = (
        "import sys, types\n"
        "for name, path in [('grpo_lightning', {root!r}), ('grpo_lightning.config', {package!r})]:\n"
        "    module = types.ModuleType(name); module.__path__ = [path]; sys.modules[name] = module\n"
        "import {module}\n"
        "print(sorted(m for m in sys.modules if m.startswith('grpo_lightning')))\n"
    )
    stand_ins = ["grpo_lightning", "grpo_lightning.config"]
    for module, expected in [
        ("grpo_lightning.config.schema", [*stand_ins, "grpo_lightning.config.schema"]),
        (
            "grpo_lightning.config.train_schema",
            [*stand_ins, "grpo_lightning.config.schema", "grpo_lightning.config.train_schema"],
        ),
    ]:
        code = probe.format(root=str(package.parent), package=str(package), module=module)
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert loaded.strip() == repr(expected)
