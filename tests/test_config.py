"""Config composition: typed schema, defaults, and clear errors naming the field."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from grpo_lightning.config import ConfigError, TrainConfig, to_train_config


def _validate(cfg):
    to_train_config(cfg)


def test_default_config_composes_with_documented_keys(compose_config):
    cfg = compose_config()
    _validate(cfg)
    for key in ["algorithm.group_size", "algorithm.clip_range", "algorithm.beta", "algorithm.entropy_coef",
                "algorithm.normalize_by_std", "algorithm.num_iterations", "algorithm.mini_batch_size",
                "algorithm.max_grad_norm", "data.batch_size", "generation.max_new_tokens",
                "generation.temperature", "generation.top_p", "generation.top_k", "optim.lr", "seed",
                "trainer.max_steps"]:
        OmegaConf.select(cfg, key, throw_on_missing=True)  # raises if the key is absent
    assert isinstance(OmegaConf.to_object(cfg), TrainConfig)


def test_algorithm_seed_defaults(compose_config):
    """conf/algorithm/grpo.yaml carries the seed defaults; config.yaml overrides them for the demo."""
    from pathlib import Path

    from grpo_lightning.train import config_dir

    grpo = OmegaConf.load(Path(config_dir()) / "algorithm" / "grpo.yaml")
    assert (grpo.group_size, grpo.clip_range, grpo.beta, grpo.entropy_coef, grpo.normalize_by_std,
            grpo.num_iterations) == (4, 0.2, 0.01, 0.01, True, 1)


@pytest.mark.parametrize("override, message", [
    ("algorithm.foo=1", "algorithm.foo"),
    ("algorithm.group_size=abc", "group_size"),
    ("generation.top_k=1.5", "top_k"),
])
def test_unknown_keys_and_wrong_types_fail_at_load(compose_config, override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(override)
    assert message in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override, message", [
    ("+algorithm.foo=1", "unknown config key(s): algorithm.foo"),
    ("+reward.functions.correct.wieght=2", "unknown config key(s): reward.functions.correct.wieght"),
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
])
def test_bad_values_name_the_field(compose_config, override, message):
    cfg = compose_config(override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        _validate(cfg)
