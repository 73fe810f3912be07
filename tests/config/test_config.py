"""Config composition: typed schema, defaults, and clear errors naming the field.

GRPO-family options: unknown names and options that the chosen variant would ignore fail at load."""

import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

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
    ],
)
def test_variant_options_are_checked(overrides, message):
    cfg = load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", *overrides.split()])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        to_train_config(cfg)


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "arithmetic"])
def test_every_preset_validates(preset):
    to_train_config(load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", f"algorithm={preset}"]))


@pytest.mark.parametrize("preset", ["dr_grpo", "dapo", "gspo", "rloo"])
def test_presets_of_papers_without_an_entropy_bonus_have_none(preset):
    cfg = to_train_config(load_config(["output_dir=/tmp/unused", "model.name_or_path=unused", f"algorithm={preset}"]))
    assert cfg.algorithm.entropy_coef == 0.0
