"""GRPOModule's update equals the reference step (grpo_lightning/algo/reference.py), and the reference
itself equals hand-computed gradients.

The module is driven only through Lightning (Trainer.fit on one external batch, data/external.py),
for every preset in conf/algorithm/ composed with the repository's Hydra config, crossed with its
performance machinery: mini-batches (with two passes), micro-batches, shared prompts, length
buckets, a chunked log-softmax and the unfused head. The batch is written by hand (two prompts of
different lengths, completions of very unequal lengths, rewards with spread in both groups, old
log-probs off the current ones so that clipping acts on both sides): nothing depends on what a
random policy samples.

Out of scope here: what only applies to generated rollouts (dynamic sampling
filter_zero_std_groups, overlong reward shaping overlong_buffer_frac; an external batch skips
generation and scoring, so dapo's are inert), and the statistics across processes (one process).

Why the optimizer is AdamW with eps = 1: with the usual eps, Adam's first step is about lr * sign(g)
and would hide a gradient of the wrong scale; with eps = 1 a step is about lr * g. The gradient
norm before clipping (actor/grad_norm) is compared too, since clipping to max_grad_norm would also
hide a scale.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from grpo_lightning.algo.reference import completion_scores, reference_step
from grpo_lightning.config import GRPOConfig, ModelConfig, to_train_config
from grpo_lightning.module import GRPOModule
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.policy.scoring.buckets import length_buckets
from grpo_lightning.rewards import WeightedReward
from grpo_lightning.run.train import load_config

PRESETS = sorted(
    path.stem
    for path in (Path(__file__).resolve().parents[2] / "conf" / "algorithm").glob("*.yaml")
    if path.stem != "gdpo"  # each reward function's scores, which a batch from elsewhere lacks: test_advantages.py
)
WHOLE_MINI_BATCH = {"clip_cov", "kl_cov"}
"""Presets that select tokens over a whole mini-batch, so refuse micro-batches."""
LENGTHS = [256, 3, 9, 40, 2, 120, 17, 5]
"""Completion lengths (EOS included; row 0 has none: cut). Sorted into 4 buckets of 2 rows they run
well under 3/4 of the padded block, so model.length_buckets=4 does split the scoring passes."""
REWARDS = [1.0, 0.0, 0.5, 0.0, 0.0, 2.0, 1.0, 1.0]  # two groups of 4, each with spread
GROUP_SIZE = 4  # the batch's own group size, whatever the preset's
LOG_RATIO = [0.013, 0.063, -0.387, 0.413, -0.037]
"""log(pi_old / pi) by token, cycled: ratios 0.99, 0.94, 1.47, 0.66, 1.04, far from any clip bound,
and no log ratio at a kink: none is 0 (|log r| of KL-Cov) or +-0.4 (GMPO's log-space clip bound),
where a rounding difference between two passes would pick another branch."""
MAX_NEW_TOKENS = 300  # not T (256): seq-mean-token-sum-norm must divide by this
TEMPERATURE = 0.7
COMMON = [
    f"generation.max_new_tokens={MAX_NEW_TOKENS}",
    f"generation.temperature={TEMPERATURE}",
    "optim.lr=0.01",
    "optim.eps=1.0",
]
VARIANTS = {
    # Each way of batching meets one (share_prompts, length_buckets) pair; the four pairs all occur.
    "whole": ["model.share_prompts=false", "model.length_buckets=1"],
    "mini": [
        "algorithm.mini_batch_size=4",
        "algorithm.num_iterations=2",
        "model.share_prompts=true",
        "model.length_buckets=4",
        "optim.warmup_steps=3",
    ],
    "micro": [
        "algorithm.micro_batch_size=2",
        "model.share_prompts=true",
        "model.length_buckets=1",
        "model.logprob_chunk_size=1",
    ],
    "mini_micro": [
        "algorithm.mini_batch_size=4",
        "algorithm.micro_batch_size=2",
        "algorithm.num_iterations=2",
        "model.share_prompts=false",
        "model.length_buckets=4",
        "model.chunked_lm_head=false",
    ],
}


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's small kernels gain nothing from a second thread, and two threads spin-wait
    against any other load on a two-core machine (this file: 35 s alone, 6 minutes beside another run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def never_called(prompts, completions, **columns):
    raise AssertionError("an external batch must not be scored again")


def compose(random_arith_dir, tmp_path, preset: str, overrides: list[str]):
    return to_train_config(
        load_config(
            [f"output_dir={tmp_path}", f"algorithm={preset}", f"model.name_or_path={random_arith_dir}"]
            + COMMON
            + overrides
        )
    )


def external_batch(policy: CausalLMPolicy) -> dict:
    """Two prompts x GROUP_SIZE hand-written completions, with the sampling policy's log-probs."""
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "7+5="])  # left-padded, lengths differ
    prompt_ids, prompt_mask = (t.repeat_interleave(GROUP_SIZE, dim=0) for t in (prompt_ids, prompt_mask))
    rows, width = len(LENGTHS), max(LENGTHS)
    vocab = policy.tokenizer.convert_tokens_to_ids(list("0123456789+="))
    completion_ids = torch.full((rows, width), policy.tokenizer.pad_token_id)  # [B, T]
    for row, length in enumerate(LENGTHS):
        completion_ids[row, :length] = torch.tensor([vocab[(3 * row + 7 * t) % len(vocab)] for t in range(length)])
        if row > 0:
            completion_ids[row, length - 1] = policy.eos_token_ids[0]
    completion_mask = (torch.arange(width) < torch.tensor(LENGTHS).unsqueeze(1)).long()  # [B, T]
    with torch.no_grad():
        logprobs, _ = completion_scores(
            policy.model, prompt_ids, prompt_mask, completion_ids, completion_mask, TEMPERATURE
        )  # [B, T]
    shift = torch.tensor(LOG_RATIO)[(torch.arange(rows).unsqueeze(1) + torch.arange(width)) % len(LOG_RATIO)]
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "logprobs": torch.where(completion_mask.bool(), logprobs + shift, 0.0),
        "rewards": torch.tensor(REWARDS),
        "truncated": torch.arange(rows) == 0,
        "group_size": GROUP_SIZE,
    }


class RandomState(L.Callback):
    """The global random state as the training step starts: the module draws its mini-batch
    permutations from it, and the reference must draw the same."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.state = torch.get_rng_state()


def module_step(policy, cfg, batch, tmp_path):
    """One training step of GRPOModule on ``batch``: (logged metrics, random state, optimizer)."""
    reward = WeightedReward({"never": (never_called, 1.0)})
    module = GRPOModule(policy, reward, algorithm=cfg.algorithm, generation=cfg.generation, optim=cfg.optim)
    random_state = RandomState()
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        callbacks=[random_state],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    return trainer.callback_metrics, random_state.state, trainer.optimizers[0]


def run_reference(model, ref_model, cfg, batch, random_state, fused):
    opt = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay, fused=fused
    )
    warmup = opt.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    )
    torch.set_rng_state(random_state)
    return reference_step(
        model,
        optimizer,
        cfg.algorithm,
        batch,
        ref_model=ref_model,
        temperature=cfg.generation.temperature,
        max_length=cfg.generation.max_new_tokens,
        scheduler=scheduler,
    )


def both_steps(random_arith_dir, tmp_path, preset, overrides, batch_edit=None):
    """(module's model after its step, its metrics, reference's model after its step, its result, initial model)."""
    cfg = compose(random_arith_dir, tmp_path, preset, overrides)
    policy = CausalLMPolicy.from_config(cfg.model)
    initial = copy.deepcopy(policy.model)
    batch = external_batch(policy)
    if batch_edit is not None:
        batch_edit(batch)
    metrics, random_state, optimizer = module_step(policy, cfg, batch, tmp_path)
    model = copy.deepcopy(initial)
    result = run_reference(model, initial, cfg, batch, random_state, optimizer.defaults.get("fused"))
    return policy.model, metrics, model, result, initial


def assert_same_step(module_model, metrics, reference_model, result, initial):
    assert math.isfinite(result["actor/loss"])
    moved = max((p - q).abs().max().item() for p, q in zip(reference_model.parameters(), initial.parameters()))
    assert moved > 1e-5, "the step must move the parameters far past the tolerance, or the comparison proves nothing"
    torch.testing.assert_close(metrics["actor/loss"].item(), result["actor/loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(metrics["actor/grad_norm"].item(), result["actor/grad_norm"], rtol=1e-5, atol=1e-7)
    for (name, p), q in zip(module_model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "preset, variant",
    [
        (preset, variant)
        for preset in PRESETS
        for variant in VARIANTS
        if not (preset in WHOLE_MINI_BATCH and "micro" in variant)
    ],
)
def test_module_step_equals_the_reference(random_arith_dir, tmp_path, preset, variant):
    assert_same_step(*both_steps(random_arith_dir, tmp_path, preset, VARIANTS[variant]))


def token_rewards(batch):
    """Process rewards instead of outcome rewards: something at the first and at the last token."""
    mask = batch["completion_mask"].float()
    last = mask.sum(dim=1).long() - 1
    rewards = torch.zeros_like(mask)
    rewards[:, 0] = 0.1 * torch.arange(mask.size(0))
    rewards[torch.arange(mask.size(0)), last] += batch.pop("rewards")
    batch["token_rewards"] = rewards


def token_rewards_with_steps(batch):
    """Process rewards at marked step ends, one of them 0 (the default mask would not find it)."""
    token_rewards(batch)
    steps = batch["token_rewards"] != 0
    steps[:, 1] = batch["completion_mask"][:, 1].bool()
    batch["token_reward_mask"] = steps


def sampled_elsewhere(batch):
    """Log-probs from another engine: the trainer's, moved by up to +-0.7 per token (weights 0.5..2)."""
    offsets = torch.linspace(-0.7, 0.7, batch["logprobs"].numel()).view_as(batch["logprobs"])
    batch["logprobs"] = torch.where(batch["completion_mask"].bool(), batch["logprobs"] + offsets, 0.0)


def given_ref_logprobs(batch):
    batch["ref_logprobs"] = torch.where(batch["completion_mask"].bool(), batch["logprobs"] - 0.3, 0.0)


EXTRAS = {
    # The reference's other branches, each on the whole batch.
    "token_rewards": ("grpo", ["algorithm.gamma=0.9"], token_rewards),
    "dr_grpo_token_rewards": ("dr_grpo", [], token_rewards),
    "token_reward_mask": ("grpo", [], token_rewards_with_steps),
    "normalized_returns_kl_in_reward": (
        "grpo",
        ["algorithm.token_advantage=normalized_returns", "algorithm.kl_in_reward=true", "algorithm.kl_estimator=k1"],
        token_rewards,
    ),
    "reinforce_pp_kl_to_go": (
        "grpo",
        [
            "algorithm.adv_estimator=reinforce_pp",
            "algorithm.kl_in_reward=true",
            "algorithm.beta=0.05",
            "algorithm.kl_estimator=k1",
            "algorithm.gamma=0.95",
        ],
        given_ref_logprobs,
    ),
    "cispo": ("grpo", ["algorithm.policy_loss=cispo"], None),
    "sapo": ("grpo", ["algorithm.policy_loss=sapo"], None),
    "top_entropy": ("grpo", ["algorithm.top_entropy_quantile=0.2"], None),
    "gmpo": ("grpo", ["algorithm.policy_loss=gmpo", "algorithm.clip_range=0.4"], None),
    "clip_cov": ("grpo", ["algorithm.policy_loss=clip_cov", "algorithm.clip_cov_ratio=0.05"], None),
    "kl_cov": (
        "grpo",
        ["algorithm.policy_loss=kl_cov", "algorithm.kl_cov_ratio=0.05", "algorithm.num_iterations=2"],
        None,
    ),
    "tis": ("grpo", ["algorithm.rollout_correction=tis", "algorithm.rollout_is_cap=1.5"], sampled_elsewhere),
    "icepop": ("grpo", ["algorithm.rollout_correction=icepop", "algorithm.rollout_mask_high=1.8"], sampled_elsewhere),
    "seq_mask": (
        "grpo",
        ["algorithm.rollout_correction=seq_mask", "algorithm.rollout_seq_kl_threshold=0.0"],
        sampled_elsewhere,
    ),
    "dual_clip": ("grpo", ["algorithm.clip_ratio_c=1.3"], None),  # bites at ratio 1.49 with A < 0
    "mask_truncated": ("dapo", ["algorithm.mask_truncated_completions=true"], None),
    "batch_std_given_ref_k2": (
        "grpo",
        ["algorithm.scale_rewards=batch", "algorithm.kl_estimator=k2"],
        given_ref_logprobs,
    ),
}


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_module_step_equals_the_reference_in_other_branches(random_arith_dir, tmp_path, extra):
    preset, overrides, edit = EXTRAS[extra]
    assert_same_step(*both_steps(random_arith_dir, tmp_path, preset, VARIANTS["whole"] + overrides, edit))


def multi_turn(batch):
    """An agent's episodes: tokens 2 and 3 of every completion longer than 4 are a tool result the
    policy read but did not sample (attended to, no loss, no sampler log-prob)."""
    present = batch["completion_mask"]
    inserted = torch.zeros_like(present)
    inserted[:, 2:4] = (present.sum(dim=1, keepdim=True) > 4).long()
    batch["completion_attention_mask"] = present
    batch["completion_mask"] = present * (1 - inserted)
    batch["logprobs"] = torch.where(batch["completion_mask"].bool(), batch["logprobs"], 0.0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_module_step_equals_the_reference_on_multi_turn_episodes(random_arith_dir, tmp_path, variant):
    module_model, metrics, reference_model, result, initial = both_steps(
        random_arith_dir, tmp_path, "grpo", VARIANTS[variant] + ["algorithm.beta=0.04"], multi_turn
    )
    assert_same_step(module_model, metrics, reference_model, result, initial)


def test_the_multi_turn_batch_has_inserted_tokens_mid_sequence(random_arith_dir):
    """Without inserted tokens before sampled ones, the multi-turn case would test nothing."""
    batch = external_batch(CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir))))
    multi_turn(batch)
    inserted = batch["completion_attention_mask"] - batch["completion_mask"]  # [B, T]
    assert inserted.sum() > 0
    assert (batch["completion_mask"][:, 4:].sum(dim=1)[inserted.sum(dim=1) > 0] > 0).all()


def infinite_padding(batch):
    batch["logprobs"] = batch["logprobs"].masked_fill(~batch["completion_mask"].bool(), float("-inf"))


@pytest.mark.parametrize("preset", PRESETS)
def test_infinite_log_probs_on_padding_change_nothing(random_arith_dir, tmp_path, preset):
    """An external server may leave -inf on the padding of its log-probs (losses.policy_objective
    says so): padding is no completion token and must not count."""
    assert_same_step(*both_steps(random_arith_dir, tmp_path, preset, VARIANTS["whole"], infinite_padding))


def test_the_batch_exercises_buckets_and_shared_prompts(random_arith_dir):
    """Without these, the model.share_prompts and model.length_buckets cases would test nothing."""
    from grpo_lightning.policy.scoring.logprobs import distinct_prompts

    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir)))
    batch = external_batch(policy)
    shared = distinct_prompts(batch["prompt_ids"], batch["prompt_mask"])
    assert shared is not None and shared[0].size(0) == 2
    for prompt_of_row in (None, shared[2]):
        buckets = length_buckets(batch["prompt_mask"], batch["completion_mask"], 4, prompt_of_row=prompt_of_row)
        assert buckets is not None and len(buckets) == 4
    assert batch["prompt_mask"].sum(dim=1).unique().numel() == 2, "prompts of two lengths: left padding"


# -- the reference itself, on hand-computed gradients -----------------------------------------------------------


class Bandit(nn.Module):
    """The same logits w [V] at every position: log pi(o) = w_o / tau - logsumexp(w / tau) whatever the
    context, so d log pi(o) / dw = (onehot(o) - softmax(w / tau)) / tau."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.w.expand(*input_ids.shape, -1)  # [B, L, V]


TAU = 0.5
W = [0.3, -0.2, 0.1, 0.5, -0.4]


def bandit_batch(completions: list[list[int]], rewards: list[float], group_size: int) -> dict:
    width = max(map(len, completions))
    ids = torch.tensor([c + [0] * (width - len(c)) for c in completions])  # [B, T]
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])  # [B, T]
    rows = len(completions)
    return {
        "prompt_ids": torch.zeros(rows, 1, dtype=torch.long),
        "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
        "completion_ids": ids,
        "completion_mask": mask,
        "rewards": torch.tensor(rewards),
        "group_size": group_size,
    }


def grad_log_pi(token: int) -> torch.Tensor:
    p = torch.softmax(torch.tensor(W) / TAU, dim=0)
    return (torch.nn.functional.one_hot(torch.tensor(token), len(W)).float() - p) / TAU  # [V]


def sgd_gradient(batch: dict, **algorithm) -> tuple[torch.Tensor, dict]:
    """The gradient the reference steps along (SGD with lr 1, no clipping: w_before - w_after)."""
    bandit = Bandit(W)
    alg = GRPOConfig(**({"beta": 0.0, "entropy_coef": 0.0, "max_grad_norm": None} | algorithm))
    result = reference_step(bandit, torch.optim.SGD(bandit.parameters(), lr=1.0), alg, batch, temperature=TAU)
    return torch.tensor(W) - bandit.w.detach(), result


def test_reference_on_policy_is_reinforce():
    """One pass, one mini-batch, no old log-probs: ratio 1, and the gradient is REINFORCE's,
    -1/B sum_i A_i 1/|o_i| sum_t grad log pi(o_it), with GRPO's group-normalized A."""
    completions = [[1, 2], [0], [3, 3, 4], [2], [4, 1], [0, 0, 2]]
    rewards = [0.0, 1.0, 2.0, 1.0, 1.0, 4.0]  # groups of 3: centred (-1, 0, 1) and (-1, -1, 2)
    advantages = [-math.sqrt(1.5), 0.0, math.sqrt(1.5), -math.sqrt(0.5), -math.sqrt(0.5), math.sqrt(2.0)]
    gradient, result = sgd_gradient(bandit_batch(completions, rewards, group_size=3))
    torch.testing.assert_close(result["advantages"].squeeze(1), torch.tensor(advantages), rtol=1e-6, atol=1e-6)
    expected = -sum(a * sum(grad_log_pi(o) for o in c) / len(c) for a, c in zip(advantages, completions)) / 6
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-7)


def test_reference_clips_where_ppo_does():
    """Old log-probs given: a token's gradient is -A r grad log pi / |o| unless the clip holds it, i.e.
    r > 1 + eps with A > 0, or r < 1 - eps with A < 0 (then 0). A < 0 with r > 1 + eps is not clipped."""
    completions = [[1, 2], [3, 4, 0]]
    ratios = [[1.5, 0.5], [0.5, 1.5, 1.0]]  # clipped, kept | clipped, kept, kept
    a = 0.5 / (0.5 + 1e-8)  # rewards (1, 0): A = +-0.5 / (std 0.5 + eps)
    batch = bandit_batch(completions, [1.0, 0.0], group_size=2)
    logp = torch.log_softmax(torch.tensor(W) / TAU, dim=0)
    old = [[logp[o] - math.log(r) for o, r in zip(c, rs)] for c, rs in zip(completions, ratios)]
    batch["logprobs"] = torch.tensor([row + [0.0] * (3 - len(row)) for row in old])
    gradient, result = sgd_gradient(batch, clip_range=0.2)
    row0 = a * 0.5 * grad_log_pi(2) / 2
    row1 = -a * (1.5 * grad_log_pi(4) + 1.0 * grad_log_pi(0)) / 3
    expected = -(row0 + row1) / 2
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-7)
    # the clipped objective's value: 1.2 A and 0.8 A stand for the clipped tokens
    loss = -((1.2 * a + 0.5 * a) / 2 + (-0.8 * a - 1.5 * a - 1.0 * a) / 3) / 2
    assert result["actor/loss"] == pytest.approx(loss, rel=1e-6)
    # REINFORCE, or a clip on both sides of 1 whatever the sign of A, would step elsewhere
    unclipped = (
        -(
            a * (1.5 * grad_log_pi(1) + 0.5 * grad_log_pi(2)) / 2
            - a * sum(r * grad_log_pi(o) for o, r in zip(completions[1], ratios[1])) / 3
        )
        / 2
    )
    assert (expected - unclipped).abs().max() > 0.1
