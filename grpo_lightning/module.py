"""GRPOModule: one GRPO training step per batch of prompts, as a LightningModule.

    generate G completions per prompt (eval mode, no grad)     rollout.generate_rollout
      -> score them with the reward functions                  rewards.WeightedReward
         (or DAPO dynamic sampling: rounds until the groups      sampling.dynamic_sample
          carry signal; or a batch with completions already:   experience.external_experience)
      -> old / reference log-probs (only when needed)          policy.token_scores
      -> reward shaping (overlong, KL in reward), advantages   experience / advantages registry
      -> num_iterations x mini-batches: policy loss, backward   losses registry (algorithm.policy_loss)
         (micro-batches accumulate), clip, optimizer step
      -> log the step's means                                  metrics.StageMeans

Departures from the GRPO paper (Shao et al. 2024, arXiv:2402.03300):
* the old policy's log-probs are not recomputed when they cannot differ from the current
  ones (one pass, one mini-batch): the ratio is then exp(logp - logp.detach()) = 1, whose
  gradient is the REINFORCE gradient, as in the paper's on-policy case;
* an optional entropy bonus (algorithm.entropy_coef), not in the paper;
* the reference policy is the initial policy, frozen for the whole run (the paper refreshes
  it between outer iterations of its Algorithm 1).

Python use, without Hydra::

    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path="path/or/hub-id"))
    reward = WeightedReward({"correct": (my_reward_fn, 1.0)})
    module = GRPOModule(policy, reward, algorithm=GRPOConfig(group_size=8))
    lightning.Trainer(max_steps=100).fit(module, datamodule=my_prompts)
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Optional

import lightning as L
import torch
from torch import Tensor

from grpo_lightning.algo.advantages import (
    TOKEN_LEVEL_SCALE,
    compute_advantages,
    get_adv_estimator,
    token_level_advantages,
)
from grpo_lightning.algo.dynamic_sampling import dynamic_sample
from grpo_lightning.algo.kl import get_kl_estimator, kl_penalized_rewards
from grpo_lightning.algo.losses import build_policy_loss, get_loss_aggregation, policy_objective
from grpo_lightning.algo.numerics import SkipGuard
from grpo_lightning.algo.pass_at_k import pass_at_k
from grpo_lightning.algo.shaping import overlong_penalty
from grpo_lightning.config import ConfigError, GenerationConfig, GRPOConfig, OptimConfig
from grpo_lightning.data.external import external_experience, is_external
from grpo_lightning.distributed import mean_over_processes, shards_weights
from grpo_lightning.metrics import StageMeans
from grpo_lightning.policy.base import Policy, SamplingParams
from grpo_lightning.policy.generation.vllm import VLLMEngineArgs
from grpo_lightning.policy.rollout import generate_rollout
from grpo_lightning.rewards import WeightedReward
from grpo_lightning.types import Experience, Rollout, RolloutSample, TokenBatch, UpdateBatch, experience_from_rollout

KL_STATS = ("grpo_kl", "kl_penalty")
LOSS_TERMS = ("actor/loss", "actor/policy_loss", "actor/kl_penalty")
"""Logged means weighted by the loss aggregation's units (sequences or tokens); the other actor
statistics are token means, weighted by token counts across micro-batches."""
DEFAULT_MAX_GENERATION_ROUNDS = 3


class GRPOModule(L.LightningModule):
    """Group Relative Policy Optimization of a :class:`~grpo_lightning.policy.base.Policy`."""

    def __init__(
        self,
        policy: Policy,
        reward: WeightedReward,
        *,
        algorithm: Optional[GRPOConfig] = None,
        generation: Optional[GenerationConfig] = None,
        optim: Optional[OptimConfig] = None,
        prompt_key: str = "prompt",
    ):
        super().__init__()
        self.automatic_optimization = False  # several optimizer steps per batch (PPO-style)
        self.policy = policy
        self.reward = reward
        self.algorithm = algorithm or GRPOConfig()
        self.generation = generation or GenerationConfig()
        self.optim = optim or OptimConfig()
        self.prompt_key = prompt_key
        self.adv_estimator = get_adv_estimator(self.algorithm.adv_estimator)
        self.policy_loss = build_policy_loss(self.algorithm.policy_loss, self.algorithm)
        self.loss_aggregation = get_loss_aggregation(self.algorithm.loss_agg)
        self.kl_estimator = get_kl_estimator(self.algorithm.kl_estimator)
        self._refill: Optional[Any] = None  # iterator over more prompts for dynamic sampling
        self._warned_gamma = False
        if self.algorithm.beta > 0:
            policy.enable_reference()
        policy.max_completion_tokens = self.generation.max_new_tokens
        self.train_means = StageMeans(self._train_metric_names())
        gen = self.generation
        self.val_k = gen.val_num_samples  # completions per validation prompt
        self.val_pass_metric = f"val/pass@{self.val_k}" if self.val_k > 1 or gen.val_pass_reward else None
        self.val_means = StageMeans(
            ["val/reward/mean"]
            + [f"val/reward/{n}/mean" for n in reward.names]
            + ([self.val_pass_metric] if self.val_pass_metric else [])
        )
        engine = VLLMEngineArgs(gen.vllm_gpu_memory_utilization, gen.vllm_max_model_len)
        self.train_sampling = SamplingParams(
            gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k, backend=gen.backend, vllm_engine=engine
        )
        self.val_sampling = SamplingParams(
            gen.max_new_tokens,
            gen.temperature,
            gen.top_p,
            gen.top_k,
            do_sample=gen.val_do_sample,
            backend=gen.backend,
            vllm_engine=engine,
        )
        self.validated_at_step: Optional[int] = None  # Lightning global_step of the last validation
        self.last_val_metrics: dict[str, float] = {}  # its results
        self.resumed_at_step: Optional[int] = None  # the global_step of the checkpoint resumed from
        self.last_rollout: Optional[RolloutSample] = None  # for callbacks (W&B completions table)
        self.skip_guard = SkipGuard(self.algorithm.max_consecutive_skips)

    def _train_metric_names(self) -> list[str]:
        alg = self.algorithm
        actor = [f"actor/{name}" for name in self.policy_loss.stat_names] + ["actor/entropy"]
        if alg.beta > 0:
            actor += [f"actor/{name}" for name in KL_STATS]
        actor += [
            "actor/loss",
            "actor/adv_mean",
            "actor/adv_std",
            "actor/grad_norm",
            "actor/lr",
            "actor/skipped_updates",
        ]
        reward = ["reward/mean", "reward/std", "reward/frac_zero_std"]
        reward += [f"reward/{name}/mean" for name in self.reward.names]
        if alg.overlong_buffer_frac is not None:
            reward.append("reward/overlong_penalty")
        if alg.filter_zero_std_groups:
            reward += ["sampling/rounds", "sampling/kept_group_frac"]
        if self.reward.non_finite == "zero":
            reward += [f"reward/{name}/non_finite" for name in self.reward.names]
        rest = ["response_length/mean", "response_length/clip_ratio", "perf/step_time_s", "perf/tokens_per_s"]
        return actor + reward + rest

    def setup(self, stage: str) -> None:
        """Under sharded weights, every process must make the same forward calls (distributed.py).

        Decided here from the running strategy, so it holds however the Trainer was built; the
        config's own checks (validate_config) only name the fix earlier for grpo-train's strategies.
        """
        strategy = self.trainer.strategy
        if self.trainer.world_size > 1 and shards_weights(strategy):
            if self.generation.backend == "vllm":
                raise ConfigError(
                    f"generation.backend=vllm with {type(strategy).__name__}: the weights are "
                    "sharded and vLLM needs whole ones; use DDP, or generation.backend=auto"
                )
            self.policy.lockstep = lambda decision: strategy.reduce_boolean_decision(decision, all=True)
        else:
            self.policy.lockstep = None

    def teardown(self, stage: str) -> None:
        self.policy.lockstep = None  # the policy used after fit (one process sampling) must not vote

    # -- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        started = time.perf_counter()
        self.train_means.reset()
        experience = (
            external_experience(batch, self.algorithm.group_size)
            if is_external(batch)
            else self._generate_experience(batch)
        )
        update = self._prepare_update(experience)
        self._update_policy(update)
        self._record_experience(experience, update.advantages)
        if experience.scores is not None:
            self.last_rollout = RolloutSample(
                experience.prompts,
                experience.completions,
                experience.scores.per_function,
                experience.scores.applicable,
                experience.rewards,
                update.advantages,
                experience.lengths,
            )
        elapsed = time.perf_counter() - started
        self.train_means.update(
            {"perf/step_time_s": elapsed, "perf/tokens_per_s": experience.lengths.sum().item() / elapsed}
        )
        self._log_step_metrics(self.train_means.compute())

    def _log_step_metrics(self, metrics: dict[str, Tensor]) -> None:
        """``self.log_dict(metrics, on_step=True, on_epoch=False)``, for a fraction of its cost.

        Lightning's log_dict moves a torchmetrics state to the value's device for every key:
        8.75 ms for our ~22 metrics against 0.21 ms here (benchmarks/bench_logging.py), ~10 % of
        a tiny-model step. Its effect for
        step-only values is two things, done here directly: the values join the trainer's
        callback_metrics (what callbacks, checkpoint monitors and the run summary read), and, on
        the steps Lightning would log (trainer.log_every_n_steps), its logger connector sends
        them to every logger at the same step, with the same ``epoch`` key.
        """
        if self._trainer is None:
            return  # as self.log outside a Trainer: nothing to log to
        trainer = self.trainer
        trainer.callback_metrics.update(metrics)
        connector = trainer._logger_connector
        if connector.should_update_logs or trainer.fast_dev_run:
            connector.log_metrics(metrics)

    def _generate_experience(self, batch: dict[str, list[Any]]) -> Experience:
        """Sample and score; with dynamic sampling, more rounds until the groups carry signal."""
        alg = self.algorithm
        if alg.gamma != 1.0 and not self._warned_gamma:
            warnings.warn(
                "algorithm.gamma only applies to token-level rewards (external batches with "
                "token_rewards); generated rollouts have outcome rewards only",
                stacklevel=2,
            )
            self._warned_gamma = True

        def draw(round_index: int):
            prompts = batch if round_index == 0 else self._more_prompts(batch)
            rollout = self._rollout(prompts, alg.group_size, self.train_sampling)
            scores = self.reward(rollout.prompts, rollout.completions, rollout.columns, device=self.device)
            if alg.overlong_buffer_frac is not None:
                max_length = self.generation.max_new_tokens
                buffer = max(1, round(alg.overlong_buffer_frac * max_length))
                penalty = overlong_penalty(rollout.lengths, max_length, buffer, alg.overlong_penalty_factor)  # [B]
                scores = replace(scores, total=scores.total + penalty)
                self.train_means.update({"reward/overlong_penalty": penalty.mean()}, weight=penalty.numel())
            return rollout, scores

        if not alg.filter_zero_std_groups:
            rollout, scores = draw(0)
        else:
            num_groups = len(batch[self.prompt_key])
            rounds_cap = alg.max_generation_rounds or DEFAULT_MAX_GENERATION_ROUNDS
            rollout, scores, rounds, kept = dynamic_sample(
                draw, num_groups, alg.group_size, rounds_cap, lockstep=self.policy.lockstep
            )
            self.train_means.update({"sampling/rounds": rounds, "sampling/kept_group_frac": kept})
        return experience_from_rollout(rollout, scores, alg.group_size)

    def _more_prompts(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The next batch of training prompts for another dynamic-sampling round.

        Drawn from the datamodule's ``refill_batches()`` (PromptDataModule: the training rows in
        an order of their own, its position kept in checkpoints), else from a second iterator
        over its ``train_dataloader()``, cycled; without a datamodule, the step's own prompts are
        sampled again.
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return batch
        if self._refill is None:
            self._refill = (
                datamodule.refill_batches()
                if hasattr(datamodule, "refill_batches")
                else _cycle(datamodule.train_dataloader)
            )
        return next(self._refill)

    def _rollout(self, batch: dict[str, list[Any]], group_size: int, sampling: SamplingParams) -> Rollout:
        prompts = batch[self.prompt_key]
        columns = {key: values for key, values in batch.items() if key != self.prompt_key}
        return generate_rollout(self.policy, prompts, columns, group_size, sampling)

    @torch.no_grad()
    def _prepare_update(self, experience: Experience) -> UpdateBatch:
        """Old and reference log-probs (computed once per batch, only when used), then advantages."""
        alg = self.algorithm
        tokens = experience.tokens
        # After the first optimizer step the policy has moved, so a second pass or a second
        # mini-batch needs the sampling policy's log-probs from before any step.
        num_rows = tokens.prompt_ids.size(0)
        needs_old = alg.num_iterations > 1 or (alg.mini_batch_size or num_rows) < num_rows or alg.kl_in_reward
        old = experience.sampling_logprobs
        if old is None and needs_old:
            old = self._score_in_chunks(tokens, reference=False)
        ref = experience.ref_logprobs if alg.beta > 0 else None  # beta = 0: no KL, given or not
        if ref is None and alg.beta > 0:
            ref = self._score_in_chunks(tokens, reference=True)
        mask = tokens.completion_mask.float()  # [B, T]
        rewards, token_rewards = experience.rewards, experience.token_rewards
        if alg.kl_in_reward:
            kl = self.kl_estimator(old, ref) * mask  # [B, T]
            rewards, token_rewards = kl_penalized_rewards(rewards, token_rewards, kl, mask, alg.beta)
            mean_kl = kl.sum() / mask.sum().clamp(min=1)
            self.train_means.update({"actor/grpo_kl": mean_kl, "actor/kl_penalty": alg.beta * mean_kl}, weight=num_rows)
        if token_rewards is not None:
            if alg.adv_estimator not in TOKEN_LEVEL_SCALE:
                raise ValueError(
                    f"this batch carries token_rewards, which algorithm.adv_estimator="
                    f"{alg.adv_estimator} does not handle; use one of {sorted(TOKEN_LEVEL_SCALE)}"
                )
            scale = TOKEN_LEVEL_SCALE[alg.adv_estimator] or self._scale_rewards()
            advantages = token_level_advantages(
                token_rewards,
                mask,
                group_ids=experience.group_ids,
                gamma=alg.gamma,
                eps=alg.adv_eps,
                scale_rewards=scale,
            )  # [B, T]
        else:
            advantages = compute_advantages(
                alg.adv_estimator,
                rewards,
                group_ids=experience.group_ids,
                group_size=experience.group_size,
                eps=alg.adv_eps,
                scale_rewards=self._scale_rewards(),
            )  # [B]
        if alg.mask_truncated_completions and experience.truncated is not None:
            tokens = replace(tokens, completion_mask=tokens.completion_mask * ~experience.truncated.unsqueeze(1))
        return UpdateBatch(
            **vars(tokens), advantages=advantages, old_logprobs=old, ref_logprobs=None if alg.kl_in_reward else ref
        )

    def _scale_rewards(self) -> str:
        alg = self.algorithm
        if alg.scale_rewards is not None:
            return alg.scale_rewards
        return "group" if alg.normalize_by_std else "none"

    def _score_in_chunks(self, tokens: TokenBatch, reference: bool) -> Tensor:
        rows = torch.arange(tokens.prompt_ids.size(0), device=tokens.prompt_ids.device)
        chunk = self.algorithm.micro_batch_size or self.algorithm.mini_batch_size or rows.numel()
        parts = [
            self.policy.token_scores(
                tokens.rows(index), temperature=self.generation.temperature, with_entropy=False, reference=reference
            )[0]
            for index in rows.split(chunk)
        ]
        return torch.cat(parts)  # [B, T]

    def _update_policy(self, update: UpdateBatch) -> None:
        alg = self.algorithm
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        num_rows = update.prompt_ids.size(0)
        mini = alg.mini_batch_size or num_rows
        micro = alg.micro_batch_size or mini
        if num_rows % mini or mini % micro:
            raise ValueError(
                f"this batch has {num_rows} completions, which algorithm.mini_batch_size={mini} "
                f"and algorithm.micro_batch_size={micro} must divide in turn"
            )
        for _ in range(alg.num_iterations):
            order = (
                torch.randperm(num_rows, device=self.device)
                if mini < num_rows
                else torch.arange(num_rows, device=self.device)
            )
            for mini_rows in order.split(mini):
                # Per process: what the mini-batch's mean runs over, averaged over processes, as
                # DDP averages their gradients: a token mean is then over every process's tokens.
                mini_mask = update.completion_mask[mini_rows].float()
                mini_units = mean_over_processes(self.loss_aggregation.units(mini_mask))
                logged, finite = [], True
                for micro_rows in mini_rows.split(micro):
                    part = update.rows(micro_rows)
                    loss, stats = self._micro_batch_loss(part)
                    # Scale so the accumulated gradient is that of the mini-batch's aggregate
                    # (a mean over sequences or over tokens, per algorithm.loss_agg).
                    units = self.loss_aggregation.units(part.completion_mask.float())
                    # (a per-process mean may be below 1; where it is 0 so is every units)
                    self.manual_backward(loss * (units / mini_units.clamp(min=1e-6)))
                    finite = finite and bool(loss.isfinite())
                    # Loss terms average over what the loss does; diagnostics are token means. A
                    # micro-batch with nothing to average over (all masked) still reports its 0s,
                    # with a weight too small to move the others.
                    stats = {f"actor/{k}": v for k, v in stats.items()} | {"actor/loss": loss.detach()}
                    logged.append(({k: v for k, v in stats.items() if k in LOSS_TERMS}, units.clamp(min=1e-6)))
                    logged.append(
                        (
                            {k: v for k, v in stats.items() if k not in LOSS_TERMS},
                            part.completion_mask.sum().float().clamp(min=1e-6),
                        )
                    )
                grad_norm = self._clip_gradients()
                # Every process must skip the same updates (their gradients are all-reduced).
                finite = self.trainer.strategy.reduce_boolean_decision(finite and bool(grad_norm.isfinite()))
                if self.skip_guard.check(finite, self.global_step):
                    optimizer.step()
                    scheduler.step()
                    self.policy.weights_updated()
                    for values, weight in logged:
                        self.train_means.update(values, weight=weight)
                    self.train_means.update({"actor/grad_norm": grad_norm, "actor/lr": scheduler.get_last_lr()[0]})
                else:
                    # Skip: with every gradient dropped AdamW changes nothing, yet the step still
                    # counts in Lightning's global_step, which max_steps and checkpoints count in.
                    optimizer.zero_grad(set_to_none=True)
                    optimizer.step()
                # Free the gradients now, not at the next update: the next rollout's sampling and
                # reference pass would otherwise run with a weight-sized gradient still held. Every
                # mini-batch thus starts from none.
                optimizer.zero_grad(set_to_none=True)
        self.train_means.update({"actor/skipped_updates": self.skip_guard.total})

    def _micro_batch_loss(self, part: UpdateBatch) -> tuple[Tensor, dict[str, Tensor]]:
        alg = self.algorithm
        # With no entropy bonus the entropy is only logged: computed without grad.
        logprobs, entropy = self.policy.token_scores(
            part, temperature=self.generation.temperature, with_entropy=True, entropy_grad=alg.entropy_coef != 0
        )  # [b, T] each
        old = part.old_logprobs if part.old_logprobs is not None else logprobs.detach()
        return policy_objective(
            self.policy_loss,
            logprobs,
            old,
            part.advantages,
            part.completion_mask,
            aggregation=self.loss_aggregation,
            max_length=self.generation.max_new_tokens,
            ref_logprobs=part.ref_logprobs,
            kl_estimator=self.kl_estimator,
            beta=alg.beta,
            entropy=entropy,
            entropy_coef=alg.entropy_coef,
        )

    def _clip_gradients(self) -> Tensor:
        """Clip to max_grad_norm (if set) and return the norm before clipping."""
        max_norm = self.algorithm.max_grad_norm
        return torch.nn.utils.clip_grad_norm_(
            list(self.policy.trainable_parameters()), max_norm if max_norm is not None else float("inf")
        )

    def _record_experience(self, experience: Experience, advantages: Tensor) -> None:
        rewards = experience.rewards
        size = rewards.numel()
        grouped = rewards.view(-1, experience.group_size)  # [N, G]
        zero_std = (grouped.amax(dim=1) == grouped.amin(dim=1)).float()  # [N]
        lengths = experience.lengths.float()
        if advantages.dim() == 2:  # token-level: over completion tokens, not padding
            advantages = advantages[experience.tokens.completion_mask.bool()]
        self.train_means.update(
            {
                "reward/mean": rewards.mean(),
                "reward/std": rewards.std(unbiased=False),
                "response_length/mean": lengths.mean(),
            },
            weight=size,
        )
        self.train_means.update(
            {"actor/adv_mean": advantages.mean(), "actor/adv_std": advantages.std(unbiased=False)}, weight=size
        )
        if experience.truncated is not None:
            self.train_means.update({"response_length/clip_ratio": experience.truncated.float().mean()}, weight=size)
        self.train_means.update({"reward/frac_zero_std": zero_std.mean()}, weight=zero_std.numel())
        scores = experience.scores
        if scores is None:
            return
        for name, values in scores.per_function.items():
            self.train_means.update({f"reward/{name}/mean": values[scores.applicable[name]]})
        for name, count in scores.non_finite.items():
            self.train_means.update({f"reward/{name}/non_finite": count})

    # -- validation ------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        rollout = self._rollout(batch, self.val_k, self.val_sampling)
        scores = self.reward(rollout.prompts, rollout.completions, rollout.columns, device=self.device)
        if self.val_pass_metric is not None:
            gen = self.generation
            judged = scores.total if gen.val_pass_reward is None else scores.per_function[gen.val_pass_reward]
            passed = (judged >= gen.val_pass_threshold).view(-1, self.val_k)  # [N, k]
            self.val_means.update({self.val_pass_metric: pass_at_k(passed, self.val_k)})
        self.val_means.update({"val/reward/mean": scores.total})
        for name, values in scores.per_function.items():
            self.val_means.update({f"val/reward/{name}/mean": values[scores.applicable[name]]})

    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()

    def on_validation_epoch_end(self) -> None:
        # Means over every validation prompt of every process (compute sums across them).
        means = self.val_means.compute()
        self.log_dict(means, on_step=False, on_epoch=True)
        self.validated_at_step = self.trainer.global_step
        self.last_val_metrics = {name: float(value) for name, value in means.items()}

    # -- checkpoint: what the parameters and optimizer do not hold (see resume.py) --------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skip_guard"] = self.skip_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "skip_guard" in checkpoint:
            self.skip_guard.load_state_dict(checkpoint["skip_guard"])
        self.resumed_at_step = checkpoint["global_step"]

    # -- optimization ----------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optim
        params = list(self.policy.trainable_parameters())
        fused = opt.fused if opt.fused is not None else _fused_adamw_supported(params)
        optimizer = torch.optim.AdamW(
            params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay, fused=fused or None
        )
        warmup = opt.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fused_adamw_supported(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW takes these parameters (its own device and dtype check)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return bool(params) and all(
        p.device.type in devices and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params
    )


def _cycle(make_loader: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """The batches of ``make_loader()``, a fresh loader each time one runs out."""
    while True:
        yield from make_loader()
