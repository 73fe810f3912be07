"""Non-language policies through the real config and GRPOModule: the continuous bandit and the
digits diffusion model learn (a signal every machine has: continuous actions give every group G
different rewards), resume exactly, export and reload; an Artifex batch trains with its own
group_size; their configs are checked."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from grpo_lightning.run.train import load_config, train


def _config(tmp_path: Path, *overrides: str):
    return load_config([f"output_dir={tmp_path}", "trainer.enable_progress_bar=false", *overrides])


def _training_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if row.get("actor/loss")]


def _mean(rows, key):
    return sum(float(row[key]) for row in rows) / len(rows)


def test_the_gaussian_policy_learns_the_bandit(tmp_path):
    train(_config(tmp_path, "experiment=gaussian_bandit", "trainer.max_steps=150", "trainer.val_every_n_steps=150"))
    rows = _training_rows(tmp_path)
    assert len(rows) == 150
    first, last = _mean(rows[:10], "reward/mean"), _mean(rows[-10:], "reward/mean")
    assert last > first + 0.5, (first, last)  # about -2.3 -> -0.5 in this many steps
    assert all(float(row["reward/frac_zero_std"]) == 0 for row in rows)
    assert any(float(row["actor/clip_frac"]) > 0 for row in rows)  # two mini-batches: the ratio moves
    assert any(float(row["actor/grpo_kl"]) > 0 for row in rows)
    from grpo_lightning.policy.gaussian import GaussianPolicy

    exported = GaussianPolicy.from_pretrained(tmp_path / "policy")
    assert exported.log_std.mean().item() < 0  # sigma narrowed from 1
    assert not (tmp_path / "samples_before.png").exists()  # its samples are not images


def test_the_diffusion_model_learns_to_draw_threes_and_saves_its_samples(tmp_path):
    train(_config(tmp_path, "experiment=digits_diffusion", "trainer.max_steps=40", "trainer.val_every_n_steps=40"))
    rows = _training_rows(tmp_path)
    first, last = _mean(rows[:5], "reward/mean"), _mean(rows[-5:], "reward/mean")
    assert last > first + 0.15, (first, last)  # the classifier's p(3): about 0.25 -> 0.8
    assert float(rows[0]["response_length/mean"]) == 20  # every denoising step is an element
    for name in ("samples_before.png", "samples_after.png", "reward_curve.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    from grpo_lightning.policy.diffusion import DiffusionPolicy

    exported = DiffusionPolicy.from_pretrained(tmp_path / "policy")
    before = DiffusionPolicy.from_pretrained(load_config(["experiment=digits_diffusion"]).model.name_or_path)
    assert not torch.equal(exported.sample_images(4, seed=0), before.sample_images(4, seed=0))


@pytest.mark.parametrize(
    "experiment",
    ["gaussian_bandit", "digits_diffusion", "gaussian_bandit algorithm.target_entropy=1.0 algorithm.entropy_coef=0.02"],
)
def test_a_resumed_run_matches_an_uninterrupted_one_bitwise(tmp_path, experiment):
    common = [f"experiment={experiment}", "trainer.val_every_n_steps=2", "checkpoint.every_n_steps=2"]
    common = common[0].split() + common[1:]
    train(_config(tmp_path / "whole", *common, "trainer.max_steps=4"))
    train(_config(tmp_path / "part", *common, "trainer.max_steps=2"))
    train(_config(tmp_path / "part", *common, "trainer.max_steps=4", "ckpt_path=last"))

    def table(run):
        with open(tmp_path / run / "metrics.csv") as handle:
            return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(handle)]

    assert table("whole") == table("part")
    from safetensors.torch import load_file

    whole, part = (load_file(tmp_path / run / "policy" / "model.safetensors") for run in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)


def test_an_artifex_batch_trains_through_the_module_with_its_own_group_size(tmp_path):
    """Artifex's layout (grouped observations, actions, rewards, log_probs, a per-batch group_size)
    goes straight to the update: the advantages are those of groups of 2, not algorithm.group_size."""
    import lightning as L
    from torch.utils.data import DataLoader

    from grpo_lightning import GRPOConfig, GRPOModule
    from grpo_lightning.policy.base import SamplingParams
    from grpo_lightning.policy.gaussian import GaussianPolicy
    from grpo_lightning.rewards import WeightedReward

    torch.manual_seed(0)
    policy = GaussianPolicy(observation_dim=2, action_dim=1, hidden_size=8)
    rollout = policy.rollout([[0.1, 0.2], [0.3, -0.4], [1.0, 0.0]], {}, 2, SamplingParams(max_new_tokens=1))
    with torch.no_grad():
        log_probs = policy.logprobs_and_entropy(rollout.tokens, temperature=1.0, with_entropy=False)[0]
    batch = {
        "observations": rollout.tokens.prompt_ids,
        "actions": rollout.tokens.completion_ids,
        "rewards": torch.tensor([1.0, 0.0, 0.0, 2.0, 0.5, 0.5]),
        "log_probs": log_probs.squeeze(1),  # [B] per sample, as Artifex keeps them
        "group_size": 2,
    }

    def never(prompts, completions, **columns):
        raise AssertionError("the batch carries its rewards")

    module = GRPOModule(
        policy,
        WeightedReward({"unused": (never, 1.0)}),
        algorithm=GRPOConfig(group_size=8, beta=0.0, entropy_coef=0.0, mini_batch_size=3),
    )
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    trainer = L.Trainer(
        max_steps=2,  # two mini-batches of 3: the second sees the ratio move off 1
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    moved = any(not torch.equal(p, q) for p, q in zip(policy.trainable_parameters(), before))
    assert moved
    metrics = trainer.callback_metrics
    # groups of 2: (1, 0) -> +-1, (0, 2) -> -+1, (0.5, 0.5) -> 0: mean 0, std sqrt(4/6)
    assert metrics["actor/adv_std"].item() == pytest.approx(math.sqrt(4 / 6), rel=1e-5)
    assert metrics["reward/frac_zero_std"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.name_or_path=null"], "model.name_or_path is null"),
        (["model=gaussian", "model.gradient_checkpointing=true"], "model.gradient_checkpointing only apply to causal"),
        (["+model.builder_kwargs.observation_dim=2"], "model.builder_kwargs has no effect without model.builder"),
        (["experiment=gaussian_bandit", "data.apply_chat_template=true"], "data.apply_chat_template format text"),
    ],
)
def test_policy_builder_options_are_checked_at_load(tmp_path, overrides, message):
    from grpo_lightning.config import ConfigError, to_train_config

    with pytest.raises(ConfigError, match=message):
        to_train_config(load_config([f"output_dir={tmp_path}", *overrides]))


def not_a_policy(name_or_path, **kwargs):
    return [name_or_path, kwargs]


def test_a_builder_that_builds_no_policy_or_takes_other_arguments_is_one_clear_error(tmp_path):
    from grpo_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="returned a list, not a grpo_lightning.policy.base.GenerativePolicy"):
        train(_config(tmp_path / "a", "experiment=gaussian_bandit", f"model.builder={__name__}.not_a_policy"))
    with pytest.raises(ConfigError, match="do not fit GaussianPolicy"):
        train(_config(tmp_path / "b", "experiment=gaussian_bandit", "+model.builder_kwargs.depth=3"))
    with pytest.raises(ConfigError, match="would be ignored"):
        train(_config(tmp_path / "c", "experiment=digits_diffusion", "+model.builder_kwargs.num_steps=5"))


def test_the_diffusion_run_sends_its_sample_grids_to_wandb(tmp_path):
    train(
        _config(
            tmp_path,
            "experiment=digits_diffusion",
            "trainer.max_steps=1",
            "logger=wandb",
            "logger.offline=true",
            "validate_before_training=false",
        )
    )
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    images = list(run.glob("files/media/images/samples/*.png"))
    assert any("samples_before" in image.name for image in images), images
    (table,) = run.glob("files/media/table/completions_*.table.json")  # a table of image cells, logged
    assert '"completion"' in table.read_text()


def test_a_rollout_correction_with_nothing_to_correct_says_so(tmp_path):
    """Rollouts sampled here carry no sampler log-probs: the correction would change nothing."""
    with pytest.warns(UserWarning, match="rollout_correction=tis has nothing to correct"):
        train(
            _config(tmp_path, "experiment=gaussian_bandit", "trainer.max_steps=2", "algorithm.rollout_correction=tis")
        )


def test_adaptive_entropy_control_steps_the_bonus_toward_the_target(tmp_path):
    """Skywork-OR1's rule: with the entropy below the target every step (a Gaussian of two dimensions
    starts at 2.84 nats), the weight rises by the step each time, from entropy_coef."""
    train(
        _config(
            tmp_path,
            "experiment=gaussian_bandit",
            "trainer.max_steps=4",
            "algorithm.target_entropy=10.0",
            "algorithm.entropy_coef=0.01",
            "algorithm.entropy_coef_step=0.02",
        )
    )
    rows = _training_rows(tmp_path)
    assert all(float(row["actor/entropy"]) < 10 for row in rows)
    assert [round(float(row["actor/entropy_coef"]), 6) for row in rows] == [0.01, 0.03, 0.05, 0.07]


@pytest.mark.parametrize("mix", [1.0, 0.5])
def test_the_reference_follows_the_policy_every_n_steps(tmp_path, mix):
    """TR-DPO's update after step 2 of 2: the reference becomes mix * policy + (1 - mix) * initial."""
    import lightning as L

    from grpo_lightning import GRPOConfig, GRPOModule
    from grpo_lightning.data.datamodule import PromptDataModule
    from grpo_lightning.data.tasks.bandit import load_observations, negative_squared_distance
    from grpo_lightning.policy.gaussian import GaussianPolicy
    from grpo_lightning.rewards import WeightedReward

    torch.manual_seed(0)
    policy = GaussianPolicy(observation_dim=2, action_dim=2, hidden_size=8)
    initial = [p.detach().clone() for p in policy.trainable_parameters()]
    algorithm = GRPOConfig(group_size=4, beta=0.01, entropy_coef=0.0, ref_update_every=2, ref_update_mix=mix)
    module = GRPOModule(policy, WeightedReward({"distance": (negative_squared_distance, 1.0)}), algorithm=algorithm)
    rows = load_observations(num_train=16, num_val=4)
    data = PromptDataModule(*rows, batch_size=4, val_batch_size=4)
    L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
        default_root_dir=tmp_path,
    ).fit(module, datamodule=data)
    for (reference, current), start in zip(policy.reference_pairs(), initial):
        assert not torch.equal(current, start)  # the policy moved
        torch.testing.assert_close(reference, mix * current.detach() + (1 - mix) * start)


def test_reference_refresh_options_are_checked(tmp_path):
    from grpo_lightning.config import ConfigError, to_train_config

    def load(*overrides):
        return to_train_config(load_config([f"output_dir={tmp_path}", *overrides]))

    with pytest.raises(ConfigError, match="needs algorithm.beta > 0"):
        load("algorithm.ref_update_every=10")
    with pytest.raises(ConfigError, match="with LoRA"):
        load("algorithm.ref_update_every=10", "algorithm.beta=0.01", "model.lora.r=4")
    with pytest.raises(ConfigError, match="save_frozen_weights=false"):
        load("algorithm.ref_update_every=10", "algorithm.beta=0.01", "checkpoint.save_frozen_weights=false")
    with pytest.raises(ConfigError, match="ref_update_mix=0.5 has no effect"):
        load("algorithm.ref_update_mix=0.5")


def test_rollouts_sampled_by_the_loop_carry_their_log_probs_to_the_correction(tmp_path, random_arith_dir):
    """generation.backend=loop keeps the sampler's log-probs: on a CPU in float32 they are the trainer's
    to rounding, so TIS changes nothing and the logged gap is tiny; the metrics are there."""
    train(
        _config(
            tmp_path,
            f"model.name_or_path={random_arith_dir}",
            "trainer.max_steps=2",
            "validate_before_training=false",
            "algorithm.rollout_correction=tis",
            "reward.functions.correct.fn=tests.signals.alternating",
        )
    )
    rows = _training_rows(tmp_path)
    assert len(rows) == 2
    for row in rows:
        assert 0 <= float(row["rollout/logprob_gap"]) < 1e-4
        assert float(row["rollout/ess"]) == pytest.approx(1.0, abs=1e-4)
        assert float(row["rollout/corrected_frac"]) == 0.0


ASYNC = [
    "trainer.val_every_n_steps=2",
    "checkpoint.every_n_steps=2",
    "validate_before_training=false",
    "reward.functions.correct.fn=tests.signals.alternating",
]


@pytest.mark.parametrize("staleness", [1, 2])
def test_asynchronous_rollouts_train_stale_by_at_most_max_staleness_and_resume_exactly(
    tmp_path, random_arith_dir, staleness
):
    """Generation runs ahead on a thread: step t trains on a rollout sampled min(t - 1, k) optimizer
    steps ago. Stopped after step 2 with rollouts in flight, the resumed run equals the whole one,
    metrics and weights, with torch's default threads."""
    common = [f"model.name_or_path={random_arith_dir}", f"generation.max_staleness={staleness}", *ASYNC]
    train(_config(tmp_path / "whole", *common, "trainer.max_steps=5"))
    train(_config(tmp_path / "part", *common, "trainer.max_steps=2"))
    saved = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=False)
    assert sorted(saved["async_rollouts"][0]) == list(range(3, 3 + staleness))  # in flight at the stop
    train(_config(tmp_path / "part", *common, "trainer.max_steps=5", "ckpt_path=last"))

    def table(run):
        with open(tmp_path / run / "metrics.csv") as handle:
            return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(handle)]

    assert table("whole") == table("part")
    rows = _training_rows(tmp_path / "whole")
    assert [float(row["rollout/staleness"]) for row in rows] == [min(step, staleness) for step in range(5)]
    from safetensors.torch import load_file

    whole, part = (load_file(tmp_path / run / "policy" / "model.safetensors") for run in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)


def test_asynchronous_rollouts_are_refused_where_they_cannot_run(tmp_path):
    from grpo_lightning.config import ConfigError, to_train_config

    def load(*overrides):
        return to_train_config(load_config([f"output_dir={tmp_path}", "generation.max_staleness=1", *overrides]))

    with pytest.raises(ConfigError, match="needs the lean generation loop"):
        load("generation.backend=hf")
    with pytest.raises(ConfigError, match="dynamic sampling decides"):
        load("algorithm=dapo")
    with pytest.raises(ConfigError, match="needs a causal LM with whole weights"):
        load("experiment=gaussian_bandit")
    with pytest.raises(ConfigError, match="generation.sampler_threads=0 applies to the asynchronous sampler"):
        load("generation.sampler_threads=0")


def test_asynchronous_rollouts_feed_the_rollout_correction_and_may_sample_elsewhere(tmp_path, random_arith_dir):
    """A stale sampler's log-probs are the correction's sampler side: from step 2 on the trainer has
    moved one step since, so the logged gap is no longer 0. The sampler's device is a setting
    (the trainer's here: a CPU)."""
    train(
        _config(
            tmp_path,
            f"model.name_or_path={random_arith_dir}",
            "generation.max_staleness=1",
            "generation.sampler_device=cpu",
            "algorithm.rollout_correction=tis",
            "trainer.max_steps=3",
            *ASYNC,
        )
    )
    rows = _training_rows(tmp_path)
    assert [float(row["rollout/staleness"]) for row in rows] == [0.0, 1.0, 1.0]
    gaps = [float(row["rollout/logprob_gap"]) for row in rows]
    assert gaps[0] < 1e-4 < min(gaps[1:])  # on policy at step 1, one step stale after
    assert all(0 < float(row["rollout/ess"]) <= 1 + 1e-6 for row in rows)


def test_the_samplers_seeds_fit_a_generator_whatever_the_runs_seed(arith_policy):
    """Any seed the config allows (and torch's own 64-bit initial seed) gives every step a distinct
    generator seed that torch.Generator takes."""
    from grpo_lightning.policy.async_rollouts import AsyncRollouts

    for seed in (0, 20_000_000, 2**32 - 1, 2**64 - 1):
        pipeline = AsyncRollouts(arith_policy, 1, seed=seed, process=1)
        try:
            seeds = [pipeline._seed(step) for step in range(1, 4)]
            assert len(set(seeds)) == 3
            for value in seeds:
                torch.Generator().manual_seed(value)
        finally:
            pipeline.close()
