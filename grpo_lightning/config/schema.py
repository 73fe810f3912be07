"""Typed configuration schemas, one dataclass per Hydra group, each checking its own fields.

Every field is documented once, in the attribute docstring under it. Hydra merges the YAML files
under ``conf/`` onto these schemas (``conf/config.yaml`` lists ``train_schema`` first in its
defaults), so an unknown key or a value of the wrong type fails when the config is composed,
before anything is built. This module holds the algorithm, generation, optim and model groups;
train_schema.py holds the data, reward, trainer, checkpoint and logger groups and TrainConfig.

What a type cannot express is checked where it belongs, each check raising a ConfigError that
names the field and the fix:
  - a group's own fields (ranges, allowed values, finite numbers, an option set where it has no
    effect within the group): the group's ``validate()`` method, here and in train_schema.py;
  - names looked up in a registry of another layer (algorithm.adv_estimator, policy_loss,
    loss_agg, kl_estimator, scale_rewards): ``validate_registry_names`` in validation.py, since
    this module is a leaf and imports nothing of grpo_lightning;
  - constraints between groups (mini-batch sizes and data.batch_size, generation.backend=vllm and
    the trainer, ...): ``validate_across_groups`` in validation.py.
``validate_config`` (validation.py) runs all three when a config is loaded (loading.py).

References used below:
  [GRPO]  Shao et al. 2024, DeepSeekMath, arXiv:2402.03300 (group-relative advantages, k3 KL).
  [PPO]   Schulman et al. 2017, arXiv:1707.06347 (clipped surrogate).
  [k3]    Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and how to fix it."""


def _require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def _set_fields(section: Any, names: Iterable[str]) -> list[str]:
    """The fields among ``names`` of a config dataclass set to other than their defaults."""
    default = type(section)()
    return [name for name in names if getattr(section, name) != getattr(default, name)]


def _require_finite(cfg: Any, prefix: str) -> None:
    """Every float of the config (reward weights included) must be finite: an inf learning rate
    or a NaN weight would only surface steps later, as a non-finite metric. ``prefix`` names the
    group in the message (``optim.``)."""
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


DTYPES = ("float32", "bfloat16", "float16")


GENERATION_BACKENDS = ("auto", "loop", "hf", "vllm")


DEFAULT_LENGTH_BUCKETS = 4
"""model.length_buckets when it is null and trainer.strategy does not shard the weights."""


@dataclass
class GRPOConfig:
    """The algorithm: group sampling, advantages and the clipped-surrogate update."""

    group_size: int = 4
    """Completions sampled per prompt (G in [GRPO]); advantages are normalized within each group."""
    clip_range: float = 0.2
    """PPO clip epsilon [PPO]: the ratio pi/pi_old is clipped to [1 - clip_range, 1 + clip_range]."""
    beta: float = 0.01
    """Weight of the k3 KL penalty to the frozen reference policy [GRPO eq. 3, k3]. 0 disables
    the penalty and the reference model is neither built nor run."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (subtracted from the loss). Entropy is logged either way."""
    normalize_by_std: bool = True
    """Divide group-centred rewards by the group's population std [GRPO]. False keeps only the
    mean baseline, as Dr. GRPO (Liu et al. 2025, arXiv:2503.20783) recommends."""
    adv_eps: float = 1e-8
    """Added to the group std before dividing, so near-constant groups stay finite."""
    adv_estimator: str = "grpo_vectorized"
    """Name in the advantage-estimator registry (``grpo_lightning.algo.advantages``)."""
    num_iterations: int = 1
    """Passes over each generated batch (mu in [GRPO] Algorithm 1). Old log-probs are taken once
    per batch; with 1 pass and 1 mini-batch they equal the current ones and are not recomputed."""
    mini_batch_size: Optional[int] = None
    """Completions per optimizer step; None means the whole batch (data.batch_size * group_size)."""
    micro_batch_size: Optional[int] = None
    """Completions per forward/backward (gradient accumulation inside a mini-batch, for memory);
    None means the whole mini-batch. Does not change the result, only peak memory."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this before each optimizer step; None disables clipping
    (the norm is still logged as actor/grad_norm)."""
    scale_rewards: Optional[str] = None
    """How group-centred rewards are scaled: ``group`` (the group's std [GRPO]), ``batch`` (the
    batch's std of the centred rewards, as REINFORCE++-baseline), ``none`` (no scaling [Dr. GRPO]).
    None follows normalize_by_std. Only for estimators that take a scale (grpo, grpo_vectorized and
    custom ones registered with scale_rewards=True)."""
    gamma: float = 1.0
    """Discount of token-level rewards: a token's advantage sums the (normalized) rewards that
    follow it, the one k tokens later weighted gamma^k. Applies to batches that carry
    ``token_rewards`` (rollouts from elsewhere) and to per-token estimators (reinforce_pp, whose
    outcome reward sits on the last token); other outcome rewards have none."""
    token_advantage: str = "process_supervision"
    """How group estimators turn ``token_rewards`` into advantages: ``process_supervision`` (step
    rewards normalized in the group, then summed over the steps that follow [GRPO section
    4.1.3]) or ``normalized_returns`` (returns first, normalized over the group's tokens).
    Formulas: docs/algorithms.md."""
    policy_loss: str = "clip"
    """Name in the policy-loss registry (``grpo_lightning.algo.losses``): ``clip`` [PPO], ``gspo``
    (Zheng et al. 2025, arXiv:2507.18071), ``cispo`` (MiniMax 2025, arXiv:2506.13585)."""
    clip_range_low: Optional[float] = None
    """Lower clip epsilon: ratios below 1 - clip_range_low are clipped. None means clip_range."""
    clip_range_high: Optional[float] = None
    """Upper clip epsilon; DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476) uses 0.28 with
    clip_range_low 0.2 to keep exploration alive. None means clip_range."""
    clip_ratio_c: Optional[float] = None
    """Dual-clip constant c > 1 (Ye et al. 2020, arXiv:1912.09729): for negative advantages the
    per-token loss is capped at -c * A. None disables it. Only with policy_loss=clip."""
    loss_agg: str = "seq-mean-token-mean"
    """How per-token losses become one number: ``seq-mean-token-mean`` [GRPO], ``token-mean``
    [DAPO], ``seq-mean-token-sum``, ``seq-mean-token-sum-norm`` (token sum / max_new_tokens
    [Dr. GRPO]). Length bias of each: docs/algorithms.md."""
    kl_estimator: str = "k3"
    """Per-token KL estimator to the reference [k3]: ``k1``, ``k2`` or ``k3``. Needs beta > 0."""
    kl_in_reward: bool = False
    """Subtract beta * sum_t KL_t from each completion's reward (before advantages) instead of
    adding the KL to the loss. Needs beta > 0."""
    filter_zero_std_groups: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal (no signal) and sample more
    prompts until data.batch_size groups remain, for up to max_generation_rounds rounds."""
    filter_groups_by: str = "shaped_reward"
    """Which reward decides that a group's rewards are all equal under filter_zero_std_groups:
    ``shaped_reward`` (the total the advantages see, overlong penalty included), ``reward`` (the
    weighted total of reward.functions, before the overlong penalty), or the name of one reward
    function, whose raw scores decide: for a 0/1 correctness reward, DAPO's 0 < #correct < G
    (Yu et al. 2025, eq. 11). Only with filter_zero_std_groups."""
    max_generation_rounds: Optional[int] = None
    """Most generation rounds per training step under filter_zero_std_groups (None: 3). If the batch
    is still short, it is filled with dropped groups (their advantages are 0)."""
    overlong_buffer_frac: Optional[float] = None
    """DAPO soft overlong punishment: the last overlong_buffer_frac * max_new_tokens tokens (at least
    1) are a buffer in which the reward gets a penalty growing linearly to -overlong_penalty_factor
    at max_new_tokens (DAPO: 4096 of 20480 tokens, 0.2). None disables it."""
    overlong_penalty_factor: float = 1.0
    """Largest overlong penalty (at max_new_tokens). Only with overlong_buffer_frac."""
    mask_truncated_completions: bool = False
    """Exclude completions cut at max_new_tokens (no EOS) from the loss [DAPO overlong filtering]."""
    ref_update_every: Optional[int] = None
    """Refresh the KL reference every this many training steps instead of freezing the initial
    policy for the whole run: reference <- ref_update_mix * policy + (1 - ref_update_mix) *
    reference (TR-DPO's hard (mix 1) and soft updates, Gorbatovski et al. 2024, arXiv:2404.09656;
    GRPO's Algorithm 1 resets it per outer iteration). Needs beta > 0. None: frozen."""
    ref_update_mix: float = 1.0
    """The weight of the current policy in each refresh (ref_update_every); 1 copies it."""
    top_entropy_quantile: Optional[float] = None
    """Train only the highest-entropy ("forking") tokens: the policy-gradient term of each
    mini-batch keeps this fraction of its valid tokens, those of highest entropy, and drops the
    rest (the KL and entropy terms keep every token); no micro-batches. Wang et al. 2025, arXiv:2506.01939, keep
    0.2. None: every token."""
    target_entropy: Optional[float] = None
    """Adaptive entropy control: after each step the entropy bonus's weight moves by
    entropy_coef_step toward keeping the mean token entropy at this target (nats), from
    entropy_coef as the start (Skywork-OR1, He et al. 2025, arXiv:2505.22312). None: a fixed weight."""
    entropy_coef_step: float = 0.005
    """Adaptive entropy control's step per training step (target_entropy; Skywork-OR1's 0.005)."""
    sapo_temperature_pos: float = 1.0
    """SAPO's gate temperature for tokens with A > 0 (policy_loss=sapo; Qwen team 2025,
    arXiv:2511.20347, and TRL's default)."""
    sapo_temperature_neg: float = 1.05
    """SAPO's gate temperature for tokens with A <= 0, above tau_pos so that negative tokens'
    gradients fade sooner (policy_loss=sapo)."""
    clip_cov_ratio: float = 2e-4
    """Clip-Cov: the fraction of valid tokens whose gradient is cut (policy_loss=clip_cov; Cui et al.
    2025, arXiv:2505.22617, and verl's default)."""
    clip_cov_lb: float = 1.0
    """Clip-Cov: only tokens whose covariance exceeds this are candidates (policy_loss=clip_cov)."""
    clip_cov_ub: float = 5.0
    """Clip-Cov: ... and is below this (policy_loss=clip_cov)."""
    kl_cov_ratio: float = 2e-3
    """KL-Cov: the fraction of valid tokens, those of highest covariance, that get the |log r|
    penalty (policy_loss=kl_cov; Cui et al. 2025 use 2e-3 for 7B models)."""
    kl_cov_coef: float = 1.0
    """KL-Cov: weight of the |log r| penalty (policy_loss=kl_cov)."""
    rollout_correction: Optional[str] = None
    """Correct for the gap between the policy that sampled a batch and the trainer's (another
    engine, a stale policy, external rollouts): ``tis`` (truncated importance sampling, each token's
    policy-gradient term weighted by min(pi_train / pi_sample, rollout_is_cap); Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training"), ``icepop`` (weighted by
    pi_train / pi_sample where it lies in [rollout_mask_low, rollout_mask_high], by 0 elsewhere; Ling
    team 2025, arXiv:2510.18855), ``seq_mask`` (sequences with A < 0 whose mean sampler-to-trainer KL exceeds
    rollout_seq_kl_threshold get no policy gradient; DeepSeek-V3.2, arXiv:2512.02556). Needs
    batches that carry the sampler's log-probs. Registry: grpo_lightning/algo/correction.py."""
    rollout_is_cap: float = 2.0
    """TIS: the largest importance weight (rollout_correction=tis)."""
    rollout_mask_low: float = 0.5
    """IcePop: tokens with pi_train / pi_sample below this are masked (rollout_correction=icepop)."""
    rollout_mask_high: float = 5.0
    """IcePop: ... or above this (rollout_correction=icepop; the paper's 0.5 and 5)."""
    rollout_seq_kl_threshold: Optional[float] = None
    """Sequence masking's KL threshold delta (rollout_correction=seq_mask; required there, as the
    paper publishes none)."""
    max_consecutive_skips: int = 3
    """An update whose loss or gradient norm is NaN/inf is skipped and counted in
    actor/skipped_updates; this many skips in a row are tolerated, one more stops the run
    (0: stop at the first). See grpo_lightning/algo/numerics.py."""

    def validate(self) -> None:
        """Check this group's own fields. The registry names (adv_estimator, policy_loss, loss_agg,
        kl_estimator, scale_rewards) and the mini-batch sizes, which also depend on data.batch_size,
        are checked in grpo_lightning/config/validation.py."""
        _require(
            self.group_size >= 2,
            f"algorithm.group_size must be >= 2 to form a group baseline "
            f"(got {self.group_size}); try algorithm.group_size=4",
        )
        _require(
            self.clip_range > 0, f"algorithm.clip_range must be > 0 (got {self.clip_range}); the usual value is 0.2"
        )
        _require(self.beta >= 0, f"algorithm.beta must be >= 0 (got {self.beta}); 0 disables the KL term")
        _require(self.entropy_coef >= 0, f"algorithm.entropy_coef must be >= 0 (got {self.entropy_coef})")
        _require(self.adv_eps >= 0, f"algorithm.adv_eps must be >= 0 (got {self.adv_eps})")
        _require(self.num_iterations >= 1, f"algorithm.num_iterations must be >= 1 (got {self.num_iterations})")
        _require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            f"algorithm.max_grad_norm must be > 0 or null (got {self.max_grad_norm})",
        )
        for name in ("clip_range_low", "clip_range_high"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"algorithm.{name} must be > 0 or null (got {value})")
        low = self.clip_range if self.clip_range_low is None else self.clip_range_low
        _require(
            self.policy_loss == "cispo" or low < 1,
            f"algorithm.clip_range_low must be < 1 (got {low}) so that 1 - clip_range_low stays a positive ratio",
        )
        if self.clip_ratio_c is not None:
            _require(
                self.policy_loss == "clip",
                f"algorithm.clip_ratio_c (dual-clip) only applies to "
                f"policy_loss=clip, not {self.policy_loss!r}; set algorithm.clip_ratio_c=null",
            )
            _require(
                self.clip_ratio_c > 1,
                f"algorithm.clip_ratio_c must be > 1 (got {self.clip_ratio_c}); the dual-clip paper uses 3",
            )
        _require(0 < self.gamma <= 1, f"algorithm.gamma must be in (0, 1] (got {self.gamma})")
        _require(
            self.beta == 0 or self.kl_in_reward or self.kl_estimator != "k1",
            "algorithm.kl_estimator=k1 in the loss regularizes nothing: its gradient, grad log pi, has expectation "
            "0 under the sampling policy. Use k3 (or k2) in the loss, or algorithm.kl_in_reward=true, where k1 is "
            "the usual choice (RLOO)",
        )
        _require(
            self.beta > 0 or self.kl_estimator == "k3",
            f"algorithm.kl_estimator={self.kl_estimator} has no effect with algorithm.beta=0 (no KL term); "
            "set algorithm.beta > 0 or leave kl_estimator=k3",
        )
        _require(
            self.beta > 0 or not self.kl_in_reward,
            "algorithm.kl_in_reward=true has no effect with algorithm.beta=0; set algorithm.beta > 0",
        )
        _require(
            self.filter_zero_std_groups or self.max_generation_rounds is None,
            "algorithm.max_generation_rounds only applies with algorithm.filter_zero_std_groups=true; "
            "enable it or set max_generation_rounds=null",
        )
        _require(
            self.filter_zero_std_groups or self.filter_groups_by == "shaped_reward",
            f"algorithm.filter_groups_by={self.filter_groups_by!r} only applies with "
            "algorithm.filter_zero_std_groups=true; enable it or leave filter_groups_by=shaped_reward",
        )
        _require(
            self.max_generation_rounds is None or self.max_generation_rounds >= 1,
            f"algorithm.max_generation_rounds must be >= 1 (got {self.max_generation_rounds})",
        )
        if self.overlong_buffer_frac is None:
            _require(
                self.overlong_penalty_factor == 1.0,
                "algorithm.overlong_penalty_factor has no effect "
                "without algorithm.overlong_buffer_frac; set it (DAPO uses 0.2)",
            )
        else:
            _require(
                0 < self.overlong_buffer_frac <= 1,
                f"algorithm.overlong_buffer_frac must be in (0, 1] (got {self.overlong_buffer_frac})",
            )
            _require(
                self.overlong_penalty_factor >= 0,
                f"algorithm.overlong_penalty_factor must be >= 0 (got {self.overlong_penalty_factor})",
            )
        unused = {
            "entropy_coef_step": (self.target_entropy is not None, 0.005),
            "ref_update_mix": (self.ref_update_every is not None, 1.0),
            "sapo_temperature_pos": (self.policy_loss == "sapo", 1.0),
            "sapo_temperature_neg": (self.policy_loss == "sapo", 1.05),
            "clip_cov_ratio": (self.policy_loss == "clip_cov", 2e-4),
            "clip_cov_lb": (self.policy_loss == "clip_cov", 1.0),
            "clip_cov_ub": (self.policy_loss == "clip_cov", 5.0),
            "kl_cov_ratio": (self.policy_loss == "kl_cov", 2e-3),
            "kl_cov_coef": (self.policy_loss == "kl_cov", 1.0),
            "rollout_is_cap": (self.rollout_correction == "tis", 2.0),
            "rollout_mask_low": (self.rollout_correction == "icepop", 0.5),
            "rollout_mask_high": (self.rollout_correction == "icepop", 5.0),
            "rollout_seq_kl_threshold": (self.rollout_correction == "seq_mask", None),
        }
        for name, (applies, default) in unused.items():
            _require(
                applies or getattr(self, name) == default,
                f"algorithm.{name}={getattr(self, name)} has no effect with algorithm.policy_loss={self.policy_loss} "
                f"and algorithm.rollout_correction={self.rollout_correction}; remove it, or choose the option "
                "it belongs to",
            )
        selects = [
            name
            for name, on in (
                (f"policy_loss={self.policy_loss}", self.policy_loss in ("clip_cov", "kl_cov")),
                ("top_entropy_quantile", self.top_entropy_quantile is not None),
            )
            if on
        ]
        _require(
            not selects or self.micro_batch_size is None,
            f"algorithm.{' and '.join(selects)} select tokens over the whole mini-batch, and micro-batches would "
            f"select within each part (another result); set algorithm.micro_batch_size=null "
            f"(got {self.micro_batch_size})",
        )
        _require(
            self.ref_update_every is None or (self.ref_update_every >= 1 and self.beta > 0),
            f"algorithm.ref_update_every={self.ref_update_every} refreshes the KL reference: it must be >= 1 and "
            f"needs algorithm.beta > 0 (got beta={self.beta})",
        )
        _require(
            0 < self.ref_update_mix <= 1, f"algorithm.ref_update_mix must be in (0, 1] (got {self.ref_update_mix})"
        )
        _require(
            self.top_entropy_quantile is None or 0 < self.top_entropy_quantile <= 1,
            f"algorithm.top_entropy_quantile must be in (0, 1] or null (got {self.top_entropy_quantile}); "
            "the paper keeps 0.2",
        )
        _require(
            self.target_entropy is None or self.target_entropy >= 0,
            f"algorithm.target_entropy must be >= 0 nats or null (got {self.target_entropy})",
        )
        for name in (
            "sapo_temperature_pos",
            "sapo_temperature_neg",
            "rollout_is_cap",
            "kl_cov_coef",
            "entropy_coef_step",
        ):
            _require(getattr(self, name) > 0, f"algorithm.{name} must be > 0 (got {getattr(self, name)})")
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            _require(0 < getattr(self, name) <= 1, f"algorithm.{name} must be in (0, 1] (got {getattr(self, name)})")
        _require(self.clip_cov_lb < self.clip_cov_ub, "algorithm.clip_cov_lb must be below algorithm.clip_cov_ub")
        _require(
            0 <= self.rollout_mask_low < 1 < self.rollout_mask_high,
            f"algorithm.rollout_mask_low and rollout_mask_high must satisfy 0 <= low < 1 < high "
            f"(got {self.rollout_mask_low}, {self.rollout_mask_high})",
        )
        _require(
            self.rollout_correction != "seq_mask"
            or (self.rollout_seq_kl_threshold is not None and self.rollout_seq_kl_threshold >= 0),
            "algorithm.rollout_correction=seq_mask needs algorithm.rollout_seq_kl_threshold >= 0 (the KL, per token, "
            "above which a negative-advantage sequence is masked; the paper publishes no value)",
        )
        _require(
            self.max_consecutive_skips >= 0,
            f"algorithm.max_consecutive_skips must be >= 0 (got {self.max_consecutive_skips})",
        )
        _require_finite(self, "algorithm.")


@dataclass
class GenerationConfig:
    """Sampling of completions during training and validation."""

    max_new_tokens: int = 8
    """Longest completion; completions cut here count in response_length/clip_ratio."""
    temperature: float = 1.0
    """Sampling temperature. The log-probs in the loss are those of this distribution
    (logits / temperature), so the ratio compares like with like."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    val_do_sample: bool = False
    """Validation samples with the settings above when true; greedy decoding when false."""
    max_staleness: int = 0
    """Asynchronous rollouts: generation runs ahead of training by at most this many steps, on a
    thread of its own sampling from weight snapshots (grpo_lightning/policy/async_rollouts.py); the
    rollout a step trains on was sampled by a policy at most this many optimizer-step batches old,
    and its log-probs are the PPO ratio's old ones. 0: sample, then train, as GRPO does. Overlap
    of generation and training is the throughput gain (benchmarks/RESULTS.md). Lean loop only;
    not with dynamic sampling or sharded weights."""
    sampler_threads: Optional[int] = None
    """torch threads of the asynchronous sampler (max_staleness > 0), set on its own thread: on a
    CPU, 1 leaves the other cores to training. None: torch's default, as the trainer."""
    sampler_device: Optional[str] = None
    """Where the asynchronous sampler's weight snapshots live and sample (max_staleness > 0), e.g.
    ``cuda:1`` to generate on a second GPU while the first trains; None: the trainer's device."""
    val_num_samples: int = 1
    """Completions per validation prompt (k). With k > 1 (which needs val_do_sample=true)
    val/reward/* average all k and ``val/pass@<k>`` is logged: the fraction of prompts with at
    least one passing completion (Chen et al. 2021, arXiv:2107.03374)."""
    val_pass_reward: Optional[str] = None
    """Reward function (a name under reward.functions) that decides whether a validation
    completion passes, for pass@k; None judges the total reward. Setting it also logs
    ``val/pass@1`` when val_num_samples is 1."""
    val_pass_threshold: float = 1.0
    """A completion passes when the judged reward is >= this value."""
    backend: str = "auto"
    """How completions are sampled: "loop" (grpo_lightning/policy/generation/loop.py: a lean KV-cache
    loop that prefills each distinct prompt once and draws each token by inverting the cumulative
    distribution: generate's distribution, not its random stream; for the decoder-only types in
    loop.LOOP_MODEL_TYPES: Llama, Qwen2/3, Mistral),
    "hf" (transformers' ``model.generate``, any model), "auto": loop where supported, else hf, or
    "vllm": a vLLM engine colocated on the training GPU, its weights synced after every optimizer
    step (grpo_lightning/policy/generation/vllm.py; needs ``pip install vllm`` and a CUDA GPU)."""
    vllm_gpu_memory_utilization: float = 0.3
    """With backend=vllm: the fraction of the GPU's memory vLLM takes for its weights and KV
    cache (vLLM's ``gpu_memory_utilization``); the rest is left to training."""
    vllm_max_model_len: Optional[int] = None
    """With backend=vllm: the longest prompt + completion vLLM plans its KV cache for; None
    takes the model's context length (lower it when the KV cache does not fit)."""

    def validate(self) -> None:
        """Check this group's own fields. Whether vLLM is installed and fits the trainer and the
        prompt length, and whether val_pass_reward names a reward function, are checked in
        grpo_lightning/config/validation.py."""
        _require(self.max_new_tokens >= 1, f"generation.max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        _require(self.max_staleness >= 0, f"generation.max_staleness must be >= 0 (got {self.max_staleness})")
        _require(
            self.sampler_device is None or self.max_staleness > 0,
            "generation.sampler_device applies to the asynchronous sampler; it needs generation.max_staleness > 0",
        )
        _require(
            self.sampler_threads is None or (self.max_staleness > 0 and self.sampler_threads >= 1),
            f"generation.sampler_threads={self.sampler_threads} applies to the asynchronous sampler: it must be "
            ">= 1 and needs generation.max_staleness > 0",
        )
        _require(
            self.max_staleness == 0 or self.backend in ("auto", "loop"),
            f"generation.max_staleness={self.max_staleness} needs the lean generation loop, which samples from "
            f"its own generator on a thread; generation.backend={self.backend} cannot: use backend=loop (or auto)",
        )
        _require(
            self.temperature > 0,
            f"generation.temperature must be > 0 for sampling (got "
            f"{self.temperature}); greedy validation is generation.val_do_sample=false",
        )
        _require(0 < self.top_p <= 1, f"generation.top_p must be in (0, 1] (got {self.top_p})")
        _require(
            self.backend in GENERATION_BACKENDS,
            f"generation.backend={self.backend!r} is unknown; choose one of {GENERATION_BACKENDS}",
        )
        if self.backend == "vllm":
            _require(
                0 < self.vllm_gpu_memory_utilization < 1,
                "generation.vllm_gpu_memory_utilization must be in "
                f"(0, 1) (got {self.vllm_gpu_memory_utilization}); training needs the rest of the GPU",
            )
        else:  # accepted and then ignored, they would mislead
            vllm_only = ("vllm_gpu_memory_utilization", "vllm_max_model_len")
            unused = [f"generation.{name}" for name in _set_fields(self, vllm_only)]
            _require(
                not unused,
                f"{', '.join(unused)} only applies with generation.backend=vllm (this run: "
                f"{self.backend}); remove it or switch that on",
            )
        _require(self.top_k >= 0, f"generation.top_k must be >= 0, 0 disables it (got {self.top_k})")
        _require_finite(self, "generation.")
        _require(self.val_num_samples >= 1, f"generation.val_num_samples must be >= 1 (got {self.val_num_samples})")
        _require(
            self.val_num_samples == 1 or self.val_do_sample,
            f"generation.val_num_samples={self.val_num_samples} with greedy validation would repeat one "
            "completion; set generation.val_do_sample=true",
        )


TOOL_CALL_FORMATS = ("auto", "qwen", "llama3", "mistral")


@dataclass
class AgentConfig:
    """Multi-turn episodes with tools and environments (grpo_lightning/policy/agent). Off until
    ``tools`` or ``environment`` is set; each completion is then a conversation: assistant turn,
    tool results, assistant turn, ... until the model answers without a tool call, the environment
    ends the episode, or a limit below is reached (each counted in agent/ended_by/<why>)."""

    tools: List[str] = field(default_factory=list)
    """Import paths of tool functions (``module.function``): type hints and a Google-style docstring
    on each, TRL's ``tools=`` contract; the chat template renders their schemas into the prompt."""
    environment: Optional[str] = None
    """Import path of an environment class or factory (TRL's ``environment_factory``): built with
    no arguments once per episode, ``reset(**row)`` gives the first observation, its public methods
    are tools, and an optional ``get_reward()`` adds the environment's reward
    (grpo_lightning/policy/agent/environments.py)."""
    environment_reward_weight: float = 1.0
    """Weight of the environment's own reward (``get_reward``) in the total. TRL adds it with weight 1;
    0 keeps it logged (``reward/<Class>/mean``, in validation too) without training on it, for runs
    whose reward functions reshape it, e.g. into turn rewards (grpo_lightning/rewards)."""
    max_turns: int = 4
    """Assistant turns per episode."""
    max_tool_calls: int = 8
    """Tool calls per episode; calls past it are not run and the episode ends."""
    max_tokens_per_turn: Optional[int] = None
    """Tokens sampled per assistant turn; None: generation.max_new_tokens. A turn cut here ends the
    episode (a half-written turn cannot be continued) and counts as truncated."""
    max_total_tokens: Optional[int] = None
    """Tokens after the prompt, sampled and inserted (tool results, observations), per episode; the
    episode ends before a turn or a tool result would pass it. None: only max_turns bounds it."""
    tool_timeout_s: float = 10.0
    """Seconds one tool call may run (from when it starts); past it the model reads a timeout error."""
    tool_workers: int = 8
    """Threads that run the tool calls of a batch of episodes concurrently."""
    tool_call_format: str = "auto"
    """How the model writes tool calls: qwen (``<tool_call>`` JSON, Qwen2.5/3 and Hermes), llama3
    (a JSON object as the turn, Llama 3.1+), mistral (``[TOOL_CALLS]``), or auto: read from the
    chat template (grpo_lightning/policy/agent/tool_calls.py)."""

    @property
    def enabled(self) -> bool:
        return bool(self.tools) or self.environment is not None

    def check_generation(self, gen: "GenerationConfig") -> None:
        """Refuse the generation settings episodes cannot run with."""
        _require(
            gen.backend != "vllm",
            "agent.tools / agent.environment with generation.backend=vllm: multi-turn episodes sample each turn "
            "with the local backends only (the vLLM engine is not wired to them yet); use generation.backend=auto",
        )
        _require(
            gen.max_staleness == 0,
            "agent.tools / agent.environment with generation.max_staleness > 0: asynchronous rollouts sample "
            "single-turn completions only; set generation.max_staleness=0",
        )

    def validate(self) -> None:
        for name in ("max_turns", "max_tool_calls", "tool_workers"):
            _require(getattr(self, name) >= 1, f"agent.{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("max_tokens_per_turn", "max_total_tokens"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"agent.{name} must be >= 1 or null (got {value})")
        _require(
            math.isfinite(self.environment_reward_weight),
            f"agent.environment_reward_weight must be finite (got {self.environment_reward_weight})",
        )
        _require(
            math.isfinite(self.tool_timeout_s) and self.tool_timeout_s > 0,
            f"agent.tool_timeout_s must be > 0 seconds (got {self.tool_timeout_s})",
        )
        _require(
            self.tool_call_format in TOOL_CALL_FORMATS,
            f"agent.tool_call_format={self.tool_call_format!r} is unknown; choose one of {TOOL_CALL_FORMATS}",
        )


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (stepped once per optimizer step)."""

    lr: float = 1e-6
    """Peak learning rate (AdamW, Loshchilov & Hutter 2019, arXiv:1711.05101). 1e-6 is the usual
    full fine-tuning rate for 0.5-7B LLMs under GRPO; the tiny built-in task uses 3e-4."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 keeps the policy's weights where the rewards take them."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's moment decay rates (beta1, beta2), each in [0, 1)."""
    eps: float = 1e-8
    """AdamW's denominator epsilon."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer steps, then constant."""
    fused: Optional[bool] = None
    """AdamW's fused kernel (``torch.optim.AdamW(fused=True)``): one kernel over all parameters
    instead of a Python loop over them, the same update up to rounding. None uses it where the
    parameters' device and dtype allow; true insists (an error where they do not)."""

    def validate(self) -> None:
        """Check this group's fields (all of them its own)."""
        _require_finite(self, "optim.")
        _require(self.lr > 0, f"optim.lr must be > 0 (got {self.lr})")
        _require(len(self.betas) == 2, f"optim.betas must have two values (got {list(self.betas)})")
        _require(
            all(0 <= beta < 1 for beta in self.betas),
            f"optim.betas must be in [0, 1) (got {list(self.betas)}); AdamW's usual values are [0.9, 0.999]",
        )
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {self.weight_decay})")
        _require(self.eps > 0, f"optim.eps must be > 0 (got {self.eps})")
        _require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0 (got {self.warmup_steps})")


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021, arXiv:2106.09685) through peft. Only the adapters
    train; the KL reference is the same model with the adapters disabled, so no second copy of
    the base weights is held."""

    r: int = 0
    """Adapter rank; 0 trains the full model (no LoRA)."""
    alpha: float = 16.0
    """Scaling numerator: the adapter update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    target_modules: Optional[List[str]] = None
    """Module names (or name suffixes) that get adapters, e.g. [q_proj, v_proj]; None adapts
    every linear layer except the output head (peft's "all-linear")."""
    save_merged: bool = True
    """Export the final policy with the adapters merged into the weights (a plain checkpoint);
    false writes the adapters alone (adapter_config.json, loaded on top of the base model)."""

    def validate(self) -> None:
        """Check this group's fields (all of them its own; named as model.lora.*)."""
        _require_finite(self, "model.lora.")
        _require(self.r >= 0, f"model.lora.r must be >= 0, 0 disables LoRA (got {self.r})")
        _require(self.alpha > 0, f"model.lora.alpha must be > 0 (got {self.alpha})")
        _require(0 <= self.dropout < 1, f"model.lora.dropout must be in [0, 1) (got {self.dropout})")
        _require(
            self.target_modules is None or len(self.target_modules) > 0,
            "model.lora.target_modules is empty; list module names or use null for all linear layers",
        )
        unused = _set_fields(self, [f.name for f in dataclasses.fields(self)]) if self.r == 0 else []
        if unused:
            raise ConfigError(
                f"model.lora.{unused[0]} is set but model.lora.r=0 (full fine-tuning); set "
                "model.lora.r > 0 to train LoRA adapters"
            )


@dataclass
class ModelConfig:
    """The policy: a causal LM loaded with ``AutoModelForCausalLM.from_pretrained``, or any
    generative policy that ``builder`` builds (the fields below ``builder_kwargs`` are the causal
    LM's and must stay at their defaults then)."""

    name_or_path: Optional[str] = MISSING
    """Hugging Face hub id or local directory. ``${asset:NAME}`` resolves to a checkpoint shipped
    inside this package (the embedded default). With ``builder``: passed to it (a checkpoint
    directory; null for a new policy where the builder can make one)."""
    builder: Optional[str] = None
    """Import path of a function ``builder(name_or_path, **builder_kwargs)`` returning a policy of
    any action space (grpo_lightning.policy.base.GenerativePolicy): e.g.
    grpo_lightning.policy.gaussian.build_gaussian_policy (continuous actions) or
    grpo_lightning.policy.diffusion.build_diffusion_policy (images). None: a causal LM."""
    builder_kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``builder``."""
    gguf_file: Optional[str] = None
    """A GGUF file (llama.cpp's format) inside ``name_or_path``, a local directory or hub repo, to
    load the weights and tokenizer from. The weights are dequantized to ``model.dtype`` when
    loaded, so they train as any float model, and ``policy/`` is exported as a plain
    ``save_pretrained`` directory. Needs the ``gguf`` package (``pip install
    'grpo-lightning[gguf]'``)."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    attn_implementation: Optional[str] = None
    """Passed to from_pretrained (eager, sdpa, flash_attention_2); None lets transformers pick."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint's repository (needed by some hub models)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    disable_dropout: bool = True
    """Zero the model's own dropout (nn.Dropout modules and attention dropout) at load, as verl
    and OpenRLHF do: with dropout, two passes over the same tokens differ, so the old/new ratio
    is not 1 where the policy has not moved and the KL to the reference is noise. LoRA's own
    dropout (model.lora.dropout) is applied as set. The exported config keeps its values."""
    logprob_chunk_size: Optional[int] = None
    """Completions per chunk when turning logits into log-probs and entropy, so the float32
    log-softmax over the vocabulary is never held for the whole batch at once. None (default):
    as many as keep a chunk's float32 logits, for completions of generation.max_new_tokens, within
    4 MiB on a CPU and 1 GiB on an accelerator, or within a quarter of the output head's float32
    weight where that is more (grpo_lightning/policy/scoring/logprobs.py: completions_per_chunk)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Train low-rank adapters instead of the full model (model.lora.r > 0)."""
    chunked_lm_head: bool = True
    """Apply the output head to the decoder's hidden states ``logprob_chunk_size`` completions at
    a time, so the [B, T, vocab] logits (and their gradient) never exist for the whole batch.
    Used for model types whose logits are the plain head output (Llama, Qwen2/3, Mistral); other
    models fall back to full logits, chunked only in the log-softmax. Same numbers either way."""
    share_prompts: Optional[bool] = None
    """Score each distinct prompt of a batch once: its keys and values go to a KV cache that all
    of its completions attend to, so the prompt costs 1/G of a full pass, forward and backward
    (the numbers are the same up to float rounding). Needs the KV cache in training mode, which
    gradient checkpointing switches off: None (default) shares unless
    model.gradient_checkpointing is on; true requires it; false always runs the full pass."""
    length_buckets: Optional[int] = None
    """At most this many groups of rows of similar completion length per scoring pass, each
    trimmed to its own longest completion and prompt, so no work is spent on the padding after
    short completions (grpo_lightning/policy/scoring/buckets.py). A pass is split only when that cuts its cost
    by a quarter or more; 1 always scores one padded block. Same log-probs either way. None: 4,
    or 1 under FSDP/DeepSpeed ZeRO-3, whose collectives need every process to make the same forward
    calls while each decides its split from its own completions."""
    compile: bool = False
    """``torch.compile`` the decoder (dynamic shapes) for generation and scoring. Costs a
    compilation at the first steps (and a C++ compiler on CPU); pays off on a GPU with a
    model large enough for kernel fusion to matter."""

    def validate(self) -> None:
        """Check this group's own fields, model.lora included. length_buckets under a sharded
        trainer.strategy is checked in grpo_lightning/config/validation.py."""
        _require_finite(self, "model.")
        if self.builder is None:
            _require(
                self.name_or_path is not None,
                "model.name_or_path is null: give a Hugging Face hub id or a local directory (or model.builder "
                "for a policy that is not a causal LM)",
            )
            _require(not self.builder_kwargs, "model.builder_kwargs has no effect without model.builder; remove it")
        else:
            language_only = [
                f.name
                for f in dataclasses.fields(self)
                if f.name not in ("name_or_path", "builder", "builder_kwargs")
                and getattr(self, f.name) != getattr(ModelConfig(), f.name)
            ]
            _require(
                not language_only,
                f"model.{', model.'.join(language_only)} only apply to causal LMs, not to the policy "
                f"model.builder={self.builder} builds; leave them at their defaults",
            )
        _require(self.dtype in DTYPES, f"model.dtype={self.dtype!r} is unknown; choose one of {DTYPES}")
        _require(
            self.gguf_file is None or self.gguf_file.endswith(".gguf"),
            f"model.gguf_file={self.gguf_file!r} is not a .gguf file; give the file's name inside "
            "model.name_or_path (e.g. model.gguf_file=model.Q4_K_M.gguf), or null for safetensors weights",
        )
        _require(
            self.length_buckets is None or self.length_buckets >= 1,
            f"model.length_buckets must be >= 1 or null, 1 scores one padded block (got {self.length_buckets})",
        )
        _require(
            self.logprob_chunk_size is None or self.logprob_chunk_size >= 1,
            f"model.logprob_chunk_size must be >= 1 or null for automatic (got {self.logprob_chunk_size})",
        )
        _require(
            not (self.share_prompts and self.gradient_checkpointing),
            "model.share_prompts=true needs the KV cache, which model.gradient_checkpointing=true "
            "switches off in training; set model.share_prompts=null (or false) to score full sequences",
        )
        self.lora.validate()
