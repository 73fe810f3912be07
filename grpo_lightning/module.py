"""GRPOModule: one GRPO training step per batch of prompts, as a LightningModule.

    generate G completions per prompt (eval mode, no grad)     rollout.generate_rollout
      -> score them with the reward functions                  rewards.WeightedReward
      -> group-relative advantages                             advantages registry
      -> old / reference log-probs (only when needed)          policy.token_scores
      -> num_iterations x mini-batches: clipped loss, backward  losses.grpo_loss
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
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

from grpo_lightning.advantages import get_adv_estimator
from grpo_lightning.config import GenerationConfig, GRPOConfig, OptimConfig
from grpo_lightning.losses import grpo_loss
from grpo_lightning.metrics import StageMeans
from grpo_lightning.numerics import SkipGuard
from grpo_lightning.policy import Policy, SamplingParams
from grpo_lightning.rewards import RewardScores, WeightedReward
from grpo_lightning.rollout import Rollout, TokenBatch, UpdateBatch, generate_rollout

ACTOR_STATS = ("policy_loss", "clip_frac", "approx_kl", "ratio_mean", "entropy")
KL_STATS = ("grpo_kl", "kl_penalty")


class GRPOModule(L.LightningModule):
    """Group Relative Policy Optimization of a :class:`~grpo_lightning.policy.Policy`."""

    def __init__(self, policy: Policy, reward: WeightedReward, *,
                 algorithm: Optional[GRPOConfig] = None, generation: Optional[GenerationConfig] = None,
                 optim: Optional[OptimConfig] = None, prompt_key: str = "prompt"):
        super().__init__()
        self.automatic_optimization = False  # several optimizer steps per batch (PPO-style)
        self.policy = policy
        self.reward = reward
        self.algorithm = algorithm or GRPOConfig()
        self.generation = generation or GenerationConfig()
        self.optim = optim or OptimConfig()
        self.prompt_key = prompt_key
        self.adv_estimator = get_adv_estimator(self.algorithm.adv_estimator)
        if self.algorithm.beta > 0:
            policy.enable_reference()
        self.train_means = StageMeans(self._train_metric_names())
        self.val_means = StageMeans(["val/reward/mean"] + [f"val/reward/{n}/mean" for n in reward.names])
        gen = self.generation
        self.train_sampling = SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k)
        self.val_sampling = SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k,
                                           do_sample=gen.val_do_sample)
        self.validated_at_step: Optional[int] = None  # Lightning global_step of the last validation
        self.skip_guard = SkipGuard(self.algorithm.max_consecutive_skips)

    def _train_metric_names(self) -> list[str]:
        actor = [f"actor/{name}" for name in ACTOR_STATS]
        if self.algorithm.beta > 0:
            actor += [f"actor/{name}" for name in KL_STATS]
        actor += ["actor/loss", "actor/adv_mean", "actor/adv_std", "actor/grad_norm", "actor/lr",
                  "actor/skipped_updates"]
        reward = ["reward/mean", "reward/std", "reward/frac_zero_std"]
        reward += [f"reward/{name}/mean" for name in self.reward.names]
        if self.reward.non_finite == "zero":
            reward += [f"reward/{name}/non_finite" for name in self.reward.names]
        rest = ["response_length/mean", "response_length/clip_ratio", "perf/step_time_s", "perf/tokens_per_s"]
        return actor + reward + rest

    # -- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        started = time.perf_counter()
        alg = self.algorithm
        rollout = self._rollout(batch, alg.group_size, self.train_sampling)
        scores = self.reward(rollout.prompts, rollout.completions, rollout.columns, device=self.device)
        advantages = self.adv_estimator(scores.total, group_ids=rollout.group_ids, group_size=alg.group_size,
                                        eps=alg.adv_eps, normalize_by_std=alg.normalize_by_std)   # [B]
        update = self._prepare_update(rollout.tokens, advantages)
        self.train_means.reset()
        self._update_policy(update)
        self._record_rollout(rollout, scores, advantages)
        elapsed = time.perf_counter() - started
        self.train_means.update({"perf/step_time_s": elapsed,
                                 "perf/tokens_per_s": rollout.lengths.sum().item() / elapsed})
        self.log_dict(self.train_means.compute(), on_step=True, on_epoch=False, batch_size=len(rollout.prompts))

    def _rollout(self, batch: dict[str, list[Any]], group_size: int, sampling: SamplingParams) -> Rollout:
        prompts = batch[self.prompt_key]
        columns = {key: values for key, values in batch.items() if key != self.prompt_key}
        return generate_rollout(self.policy, prompts, columns, group_size, sampling)

    @torch.no_grad()
    def _prepare_update(self, tokens: TokenBatch, advantages: Tensor) -> UpdateBatch:
        """Old and reference log-probs, computed once per batch and only when they are used."""
        alg = self.algorithm
        # After the first optimizer step the policy has moved, so a second pass or a second
        # mini-batch needs the sampling policy's log-probs from before any step.
        num_rows = tokens.prompt_ids.size(0)
        needs_old = alg.num_iterations > 1 or (alg.mini_batch_size or num_rows) < num_rows
        old = self._score_in_chunks(tokens, reference=False) if needs_old else None
        ref = self._score_in_chunks(tokens, reference=True) if alg.beta > 0 else None
        return UpdateBatch(**vars(tokens), advantages=advantages, old_logprobs=old, ref_logprobs=ref)

    def _score_in_chunks(self, tokens: TokenBatch, reference: bool) -> Tensor:
        rows = torch.arange(tokens.prompt_ids.size(0), device=tokens.prompt_ids.device)
        chunk = self.algorithm.micro_batch_size or self.algorithm.mini_batch_size or rows.numel()
        parts = [self.policy.token_scores(tokens.rows(index), temperature=self.generation.temperature,
                                          with_entropy=False, reference=reference)[0]
                 for index in rows.split(chunk)]
        return torch.cat(parts)                                                    # [B, T]

    def _update_policy(self, update: UpdateBatch) -> None:
        alg = self.algorithm
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        num_rows = update.prompt_ids.size(0)
        mini = alg.mini_batch_size or num_rows
        micro = alg.micro_batch_size or mini
        for _ in range(alg.num_iterations):
            order = torch.randperm(num_rows, device=self.device) if mini < num_rows else \
                torch.arange(num_rows, device=self.device)
            for mini_rows in order.split(mini):
                optimizer.zero_grad(set_to_none=True)
                logged, finite = [], True
                for micro_rows in mini_rows.split(micro):
                    part = update.rows(micro_rows)
                    loss, stats = self._micro_batch_loss(part)
                    # Scale so the accumulated gradient is that of the mini-batch mean.
                    self.manual_backward(loss * (micro_rows.numel() / mini_rows.numel()))
                    finite = finite and bool(loss.isfinite())
                    logged.append(({f"actor/{k}": v for k, v in stats.items()} | {"actor/loss": loss.detach()},
                                   micro_rows.numel()))
                grad_norm = self._clip_gradients()
                # Every process must skip the same updates (their gradients are all-reduced).
                finite = self.trainer.strategy.reduce_boolean_decision(finite and bool(grad_norm.isfinite()))
                if self.skip_guard.check(finite, self.global_step):
                    optimizer.step()
                    scheduler.step()
                    for values, weight in logged:
                        self.train_means.update(values, weight=weight)
                    self.train_means.update({"actor/grad_norm": grad_norm, "actor/lr": scheduler.get_last_lr()[0]})
                else:
                    # Skip: with every gradient dropped AdamW changes nothing, yet the step still
                    # counts in Lightning's global_step, which max_steps and checkpoints count in.
                    optimizer.zero_grad(set_to_none=True)
                    optimizer.step()
        self.train_means.update({"actor/skipped_updates": self.skip_guard.total})

    def _micro_batch_loss(self, part: UpdateBatch) -> tuple[Tensor, dict[str, Tensor]]:
        alg = self.algorithm
        logprobs, entropy = self.policy.token_scores(part, temperature=self.generation.temperature,
                                                     with_entropy=True)          # [b, T] each
        if alg.entropy_coef == 0:
            entropy = entropy.detach()  # logged only
        old = part.old_logprobs if part.old_logprobs is not None else logprobs.detach()
        return grpo_loss(logprobs, old, part.advantages, part.completion_mask, ref_logprobs=part.ref_logprobs,
                         entropy=entropy, clip_range=alg.clip_range, beta=alg.beta,
                         entropy_coef=alg.entropy_coef)

    def _clip_gradients(self) -> Tensor:
        """Clip to max_grad_norm (if set) and return the norm before clipping."""
        max_norm = self.algorithm.max_grad_norm
        return torch.nn.utils.clip_grad_norm_(list(self.policy.trainable_parameters()),
                                              max_norm if max_norm is not None else float("inf"))

    def _record_rollout(self, rollout: Rollout, scores: RewardScores, advantages: Tensor) -> None:
        size = len(rollout.prompts)
        rewards = scores.total
        grouped = rewards.view(-1, self.algorithm.group_size)                       # [N, G]
        zero_std = (grouped.amax(dim=1) == grouped.amin(dim=1)).float()             # [N]
        lengths = rollout.lengths.float()
        self.train_means.update({
            "reward/mean": rewards.mean(),
            "reward/std": rewards.std(unbiased=False),
            "actor/adv_mean": advantages.mean(),
            "actor/adv_std": advantages.std(unbiased=False),
            "response_length/mean": lengths.mean(),
            "response_length/clip_ratio": rollout.truncated.float().mean(),
        }, weight=size)
        self.train_means.update({"reward/frac_zero_std": zero_std.mean()}, weight=zero_std.numel())
        for name, values in scores.per_function.items():
            applicable = scores.applicable[name]
            if applicable.any():
                self.train_means.update({f"reward/{name}/mean": values[applicable].mean()},
                                        weight=applicable.sum())
        for name, count in scores.non_finite.items():
            self.train_means.update({f"reward/{name}/non_finite": count})

    # -- validation ------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        rollout = self._rollout(batch, 1, self.val_sampling)
        scores = self.reward(rollout.prompts, rollout.completions, rollout.columns, device=self.device)
        size = len(rollout.prompts)
        self.val_means["val/reward/mean"].update(scores.total)
        for name, values in scores.per_function.items():
            applicable = scores.applicable[name]
            if applicable.any():
                self.val_means[f"val/reward/{name}/mean"].update(values[applicable])
        for name in self.val_means.names:
            if self.val_means[name].update_called:
                self.log(name, self.val_means[name], on_step=False, on_epoch=True, batch_size=size)

    def on_validation_epoch_end(self) -> None:
        self.validated_at_step = self.trainer.global_step

    # -- checkpoint: what the parameters and optimizer do not hold (see resume.py) --------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skip_guard"] = self.skip_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "skip_guard" in checkpoint:
            self.skip_guard.load_state_dict(checkpoint["skip_guard"])

    # -- optimization ----------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optim
        optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=opt.lr, betas=tuple(opt.betas),
                                      eps=opt.eps, weight_decay=opt.weight_decay)
        warmup = opt.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
