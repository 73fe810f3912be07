"""GRPO-family options: unknown names and options that the chosen variant would ignore fail at load."""

import pytest

from grpo_lightning.config import ConfigError, to_train_config
from grpo_lightning.run.train import load_config


@pytest.mark.parametrize("overrides, message", [
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
])
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
