"""Rollouts from elsewhere: a batch that carries completions, log-probs and rewards skips generation."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grpo_lightning.config import GenerationConfig, GRPOConfig
from grpo_lightning.module import GRPOModule
from grpo_lightning.rewards import WeightedReward
from grpo_lightning.types import TokenBatch


def never_called(prompts, completions, **columns):
    raise AssertionError("an external batch must not be scored again")


LENGTHS = [1, 4, 3, 3, 2, 2, 4, 1]
"""Completion lengths (EOS included) of the hand-written external rows: micro-batches of 2 rows
hold 5, 6, 4 and 5 tokens."""


def _external_batches(policy, group_size, with_ref, token_rewards=False):
    """Two prompts x group_size hand-written completions: the same tokens on every machine (a
    sampled draw would depend on the CPU's floating-point paths)."""
    prompt_ids, prompt_mask = (
        t.repeat_interleave(group_size, dim=0) for t in policy.encode_prompts(["12+34=", "50+7="])
    )  # [B, P]
    rows, width = prompt_ids.size(0), max(LENGTHS)
    digits = policy.tokenizer.convert_tokens_to_ids(list("0123456789"))
    completion_ids = torch.full((rows, width), policy.tokenizer.pad_token_id)  # [B, T]
    for row, length in enumerate(LENGTHS[:rows]):
        completion_ids[row, : length - 1] = torch.tensor([digits[(row + t) % 10] for t in range(length - 1)])
        completion_ids[row, length - 1] = policy.eos_token_ids[0]
    completion_mask = (torch.arange(width) < torch.tensor(LENGTHS[:rows]).unsqueeze(1)).long()
    tokens = TokenBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad():
        logprobs, _ = policy.logprobs_and_entropy(tokens, temperature=1.0, with_entropy=False)
    batch = {
        "prompt_ids": tokens.prompt_ids,
        "prompt_mask": tokens.prompt_mask,
        "completion_ids": tokens.completion_ids,
        "completion_mask": tokens.completion_mask,
        "logprobs": logprobs,
        "group_size": group_size,
    }
    rewards = torch.arange(tokens.completion_ids.size(0), dtype=torch.float32) % 3
    if token_rewards:
        batch["token_rewards"] = torch.zeros_like(logprobs)
        batch["token_rewards"][:, 0] = rewards
    else:
        batch["rewards"] = rewards
    if with_ref:
        batch["ref_logprobs"] = logprobs - 0.1
    return [batch]


def _fit(policy, batches, tmp_path, expect_update=True, **algorithm):
    reward = WeightedReward({"never": (never_called, 1.0)})
    module = GRPOModule(
        policy, reward, algorithm=GRPOConfig(group_size=4, **algorithm), generation=GenerationConfig(max_new_tokens=4)
    )
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    after = policy.model.state_dict()
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == expect_update, "parameters changed" if changed else "no parameter changed"
    return trainer.callback_metrics


@pytest.mark.parametrize("with_ref, beta", [(False, 0.0), (True, 0.04), (True, 0.0)])
def test_external_batch_runs_the_update_with_its_own_group_size(arith_policy, tmp_path, with_ref, beta):
    # group_size 2 in the batch overrides the config's 4 (the 4 rows form 2 groups of 2; with 4
    # they would be one group)
    batches = _external_batches(arith_policy, 2, with_ref)
    metrics = _fit(arith_policy, batches, tmp_path, beta=beta, entropy_coef=0.0)
    assert "actor/policy_loss" in metrics and "reward/mean" in metrics
    rewards = batches[0]["rewards"]
    # rewards (0, 1), (2, 0): both groups have spread -> frac_zero_std 0 with groups of 2
    assert metrics["reward/frac_zero_std"].item() == 0.0
    assert metrics["reward/mean"].item() == pytest.approx(rewards.mean().item())
    assert metrics["actor/ratio_mean"].item() == pytest.approx(1.0, abs=1e-4)  # given log-probs = current
    assert ("actor/grpo_kl" in metrics) == (beta > 0)  # beta = 0: given ref log-probs are unused
    if beta > 0:
        # the batch's reference log-probs are used: k3 at log pi_ref - log pi = -0.1 on every token
        x = -0.1
        assert metrics["actor/grpo_kl"].item() == pytest.approx(torch.tensor(x).exp().item() - x - 1, rel=1e-3)


def test_external_token_rewards(arith_policy, tmp_path):
    metrics = _fit(
        arith_policy,
        _external_batches(arith_policy, 4, False, token_rewards=True),
        tmp_path,
        beta=0.0,
        entropy_coef=0.0,
        gamma=0.9,
    )
    assert "actor/adv_mean" in metrics


def test_what_other_tools_leave_on_padding_reaches_no_reward_or_advantage(arith_policy):
    """-inf log-probs and NaN token rewards on padding (as other tools write them), with the KL in
    the reward: every reward and advantage stays finite, and equal to the clean batch's."""
    from grpo_lightning.algo.kl import get_kl_estimator
    from grpo_lightning.algo.update_batch import prepare_update
    from grpo_lightning.data.external import external_experience

    (clean,) = _external_batches(arith_policy, 4, with_ref=True, token_rewards=True)
    padding = clean["completion_mask"] == 0
    assert padding.any(), "the test needs padding"
    dirty = dict(clean)
    for key, value in (("logprobs", -torch.inf), ("ref_logprobs", -torch.inf), ("token_rewards", torch.nan)):
        dirty[key] = clean[key].masked_fill(padding, value)
    for estimator in ("grpo", "reinforce_pp"):
        alg = GRPOConfig(
            beta=0.04,
            kl_in_reward=True,
            kl_estimator="k1",
            gamma=0.9,
            adv_estimator=estimator,
            token_advantage="normalized_returns",
        )
        results = []
        for batch in (clean, dirty):
            experience = external_experience(batch, 4)
            update, kl_means = prepare_update(experience, alg, score=None, kl_estimator=get_kl_estimator("k1"))
            assert torch.isfinite(experience.rewards).all() and torch.isfinite(update.advantages).all()
            results.append((experience.rewards, update.advantages, kl_means["actor/grpo_kl"]))
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want)


def test_token_reward_mask_marks_the_steps_and_is_checked(arith_policy):
    """A step that scores 0 in the middle of a completion counts only where token_reward_mask says so."""
    from grpo_lightning.algo.update_batch import prepare_update
    from grpo_lightning.data.external import external_experience

    (batch,) = _external_batches(arith_policy, 4, with_ref=False, token_rewards=True)
    alg = GRPOConfig(beta=0.0)
    unmarked = prepare_update(external_experience(batch, 4), alg, score=None, kl_estimator=None)[0]
    steps = batch["token_rewards"] != 0
    steps[:, 0] = True  # a zero-reward step at each first token: one more step per completion
    marked = prepare_update(
        external_experience(dict(batch, token_reward_mask=steps), 4), alg, score=None, kl_estimator=None
    )[0]
    assert not torch.allclose(marked.advantages, unmarked.advantages)
    with pytest.raises(ValueError, match="token_reward_mask has shape"):
        external_experience(dict(batch, token_reward_mask=steps[:, :1]), 4)
    without = {k: v for k, v in batch.items() if k != "token_rewards"}
    with pytest.raises(ValueError, match="token_reward_mask marks where they sit"):
        external_experience(dict(without, rewards=torch.zeros(len(steps)), token_reward_mask=steps), 4)


def test_external_batch_missing_keys_is_a_clear_error():
    from grpo_lightning.data.external import external_experience

    with pytest.raises(ValueError, match="logprobs"):
        external_experience({"completion_ids": torch.zeros(4, 2)}, 2)


def test_mask_truncated_completions_removes_them_from_the_loss(arith_policy, tmp_path):
    batches = _external_batches(arith_policy, 2, False)
    batches[0]["truncated"] = torch.ones(4, dtype=torch.bool)  # every completion cut: nothing to learn
    metrics = _fit(
        arith_policy,
        batches,
        tmp_path,
        expect_update=False,
        beta=0.0,
        entropy_coef=0.0,
        mask_truncated_completions=True,
    )
    assert metrics["actor/policy_loss"].item() == 0.0
    assert metrics["response_length/clip_ratio"].item() == 1.0


@pytest.mark.parametrize(
    "loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_gradient_and_statistics_do_not_depend_on_the_micro_batch_split(arith_policy, tmp_path, loss_agg):
    """Micro-batches of unequal token counts: the accumulated gradient (its norm, logged before
    clipping), the logged loss and the token-mean diagnostics are those of one micro-batch."""
    import copy

    batches = _external_batches(arith_policy, 4, with_ref=True)
    lengths = batches[0]["completion_mask"].sum(dim=1)
    assert len(set(lengths.view(-1, 2).sum(dim=1).tolist())) > 1, "the micro-batches should differ in tokens"
    metrics = {}
    for micro in (None, 2):
        policy = copy.deepcopy(arith_policy)
        logged = _fit(policy, batches, tmp_path / str(micro), beta=0.04, loss_agg=loss_agg, micro_batch_size=micro)
        metrics[micro] = {k: v.item() for k, v in logged.items() if k.startswith("actor/")}
    assert metrics[None].keys() == metrics[2].keys()
    for name, value in metrics[None].items():
        assert metrics[2][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_rollout_correction_logs_the_gap_between_sampler_and_trainer(arith_policy, tmp_path):
    """External log-probs a little off the trainer's: TIS caps the weights, and the gap, the weights
    and the effective sample size are logged."""
    (batch,) = _external_batches(arith_policy, 4, with_ref=False)
    valid = batch["completion_mask"].bool()
    batch["logprobs"] = torch.where(valid, batch["logprobs"] - 0.5 * (torch.arange(valid.size(1)) % 2), 0.0)
    metrics = _fit(arith_policy, [batch], tmp_path, beta=0.0, rollout_correction="tis", rollout_is_cap=1.2)
    assert metrics["rollout/logprob_gap"].item() > 0.1
    assert metrics["rollout/is_ratio_max"].item() == pytest.approx(math.exp(0.5), rel=1e-4)
    assert 0 < metrics["rollout/corrected_frac"].item() < 1 and 0 < metrics["rollout/ess"].item() < 1
