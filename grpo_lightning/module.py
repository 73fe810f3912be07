"""GRPOModule: one GRPO training step per batch of prompts, as a LightningModule.

    generate G completions per prompt (eval mode, no grad)     policy.rollout (policy/base.py)
      (or take the ones a sampler thread generated ahead:      policy.async_rollouts,
       generation.max_staleness > 0)
      -> score them with the reward functions                  rewards.WeightedReward
         (or DAPO dynamic sampling: rounds until the groups      algo.dynamic_sampling
          carry signal; or a batch with completions already:   data.external)
      -> old / reference log-probs (only when needed)          policy.logprobs_and_entropy
         and the rollout correction where the sampler's differ  algo.correction
      -> reward shaping (overlong, KL in reward), advantages   algo.shaping, algo.kl, algo.advantages
      -> num_iterations x mini-batches: policy loss, backward   algo.losses (algorithm.policy_loss)
         (micro-batches accumulate), clip, optimizer step
      -> log the step's means                                  metrics.StageMeans

The same step as one page of math, without the performance machinery, is
grpo_lightning/algo/reference.py: read it first; tests/algo/test_reference.py holds this module to it.

Departures from the GRPO paper (Shao et al. 2024, arXiv:2402.03300):
* the old policy's log-probs are not recomputed when they cannot differ from the current
  ones (one pass, one mini-batch): the ratio is then exp(logp - logp.detach()) = 1, whose
  gradient is the REINFORCE gradient, as in the paper's on-policy case;
* an optional entropy bonus (algorithm.entropy_coef), not in the paper;
* the reference policy is the initial policy, frozen for the whole run (the paper refreshes
  it between outer iterations of its Algorithm 1).

Run it with ``grpo-train`` (grpo_lightning/run/train.py), or from Python without Hydra (README, "Python"):
``lightning.Trainer(max_steps=100).fit(GRPOModule(policy, reward, algorithm=GRPOConfig()), datamodule=prompts)``.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import replace
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

from grpo_lightning import metrics, slim_checkpoint
from grpo_lightning.algo.advantages import PER_TOKEN, get_adv_estimator
from grpo_lightning.algo.dynamic_sampling import dynamic_sample
from grpo_lightning.algo.entropy_control import next_entropy_coef
from grpo_lightning.algo.kl import get_kl_estimator
from grpo_lightning.algo.losses import build_policy_loss, get_loss_aggregation, policy_objective
from grpo_lightning.algo.numerics import SkipGuard
from grpo_lightning.algo.pass_at_k import pass_at_k
from grpo_lightning.algo.shaping import overlong_buffer, overlong_penalty
from grpo_lightning.algo.update_batch import mini_batches, prepare_update
from grpo_lightning.compat import (
    STEPS_TRAINED_KEY,
    has_trainer,
    log_step_metrics,
    log_validation_metrics,
    steps_trained_in_checkpoint,
)
from grpo_lightning.config import CheckpointConfig, ConfigError, GenerationConfig, GRPOConfig, OptimConfig
from grpo_lightning.data.datamodule import refill_stream
from grpo_lightning.data.external import external_experience, is_external
from grpo_lightning.data.formatting import CHAT_MESSAGES_COLUMN
from grpo_lightning.distributed import mean_over_processes, per_process, shards_weights
from grpo_lightning.distributed import rank as process_rank
from grpo_lightning.optim import build_optimizer
from grpo_lightning.policy.agent import Agent
from grpo_lightning.policy.async_rollouts import AsyncRollouts
from grpo_lightning.policy.base import GenerativePolicy, Policy, SamplingParams
from grpo_lightning.rewards import RewardScores, WeightedReward
from grpo_lightning.types import (
    Experience,
    Rollout,
    RolloutSample,
    TokenBatch,
    TrainingProgress,
    UpdateBatch,
    experience_from_rollout,
)

DEFAULT_MAX_GENERATION_ROUNDS = 3
GAMMA_UNUSED = (
    "algorithm.gamma only applies to token-level rewards (external batches with token_rewards, an agent's "
    "turn rewards) and per-token estimators (reinforce_pp); these rollouts have outcome rewards only"
)

NOTHING_TO_CORRECT = (
    "algorithm.rollout_correction={} has nothing to correct in this batch: it carries no sampler "
    "log-probs (the lean generation loop keeps them; generate and this policy's sampler do not); it "
    "applies to rollouts that carry them (generation.backend=loop, external rollouts' logprobs)"
)

ASYNC_ROLLOUTS_KEY = "async_rollouts"
"""The checkpoint's rollouts in flight under generation.max_staleness > 0, per process: a resumed run
trains on them (the weights that sampled them are gone)."""

ENTROPY_COEF_KEY = "entropy_coef"
"""The checkpoint's entropy-bonus weight, which adaptive entropy control (algorithm.target_entropy)
changes from step to step."""

LAST_VALIDATION_KEY = "last_validation"
"""The checkpoint's record of the validation after the step it was written at, if there was one:
continuing a finished run does not validate again even where checkpoints/final_validation.json
was never written (a run killed in between)."""


class GRPOModule(L.LightningModule):
    """Group Relative Policy Optimization of a :class:`~grpo_lightning.policy.base.GenerativePolicy`:
    a language model (:class:`~grpo_lightning.policy.base.Policy`) or a policy of any other action space."""

    def __init__(
        self,
        policy: GenerativePolicy,
        reward: WeightedReward,
        *,
        algorithm: Optional[GRPOConfig] = None,
        generation: Optional[GenerationConfig] = None,
        optim: Optional[OptimConfig] = None,
        checkpoint: Optional[CheckpointConfig] = None,
        prompt_key: str = "prompt",
        agent: Optional[Agent] = None,
    ):
        super().__init__()
        self.automatic_optimization = False  # several optimizer steps per batch (PPO-style)
        self.policy, self.reward, self.prompt_key = policy, reward, prompt_key
        alg = self.algorithm = algorithm or GRPOConfig()
        gen = self.generation = generation or GenerationConfig()
        # Multi-turn episodes with tools / an environment (policy/agent), or None: one completion per row.
        self.agent = agent
        if agent is not None:
            agent.limits.check_generation(gen)
            agent.check_policy(policy)
            reward.add_functions(agent.reward_functions(), weight=agent.limits.environment_reward_weight)
        self.max_training_steps: Optional[int] = None  # trainer.max_steps in training steps (grpo-train sets it)
        self.optim = optim or OptimConfig()
        self.checkpoint_contents = checkpoint or CheckpointConfig()
        self._frozen_fingerprint: Optional[tuple[list[str], Tensor]] = None  # the frozen weights never change
        self.adv_estimator = get_adv_estimator(alg.adv_estimator)
        self.policy_loss = build_policy_loss(alg.policy_loss, alg)
        self.loss_aggregation = get_loss_aggregation(alg.loss_agg)
        self.kl_estimator = get_kl_estimator(alg.kl_estimator)
        # (logprobs, old_logprobs, advantages, mask, *, ref_logprobs, entropy, entropy_coef) -> (loss, stats)
        terms = dict(
            aggregation=self.loss_aggregation,
            kl_estimator=self.kl_estimator,
            top_entropy_fraction=alg.top_entropy_quantile,
        )
        # The most tokens one completion can carry a loss on (Dr. GRPO's constant normalizer).
        self.max_completion_length = (
            agent.max_sampled_tokens(gen.max_new_tokens) if agent is not None else gen.max_new_tokens
        )
        self.objective = functools.partial(
            policy_objective, self.policy_loss, max_length=self.max_completion_length, beta=alg.beta, **terms
        )
        self._refill: Optional[Any] = None  # iterator over more prompts for dynamic sampling
        self._warned_gamma = False
        self._warned_correction = False
        self.async_rollouts: Optional[AsyncRollouts] = None  # generation.max_staleness > 0, while fitting
        self._async_state: Optional[dict[int, dict[str, Any]]] = None  # rollouts in flight, from a checkpoint
        # The entropy bonus's weight: fixed, or steered toward algorithm.target_entropy each step.
        self.entropy_coef = alg.entropy_coef
        if alg.beta > 0:
            policy.enable_reference()
        # An agent's completions also hold tool results: their width is known per batch only.
        policy.max_completion_tokens = gen.max_new_tokens if agent is None else None
        names = metrics.train_metric_names(
            self.policy_loss.stat_names, reward.names, alg, reward.non_finite == "zero", gen.max_staleness
        )
        names += metrics.AGENT_METRICS if agent is not None else []
        self.train_means = metrics.StageMeans(names)
        self.val_k = gen.val_num_samples  # completions per validation prompt
        self.val_pass_metric = f"val/pass@{self.val_k}" if self.val_k > 1 or gen.val_pass_reward else None
        val_names = metrics.val_metric_names(reward.names, self.val_pass_metric)
        val_names += [f"val/{name}" for name in metrics.AGENT_METRICS] if agent is not None else []
        self.val_means = metrics.StageMeans(val_names, prefix="val/")
        # The sampler's own log-probs are kept where a rollout correction will compare them with the trainer's.
        self.train_sampling = replace(
            SamplingParams.from_config(gen), record_logprobs=alg.rollout_correction is not None
        )
        self.val_sampling = SamplingParams.from_config(gen, do_sample=gen.val_do_sample)
        self.validated_at_step: Optional[int] = None  # Lightning global_step of the last validation
        self.last_val_metrics: dict[str, float] = {}  # its results
        self.resumed_at_step: Optional[int] = None  # the global_step of the checkpoint resumed from
        self.last_rollout: Optional[RolloutSample] = None  # for callbacks (W&B completions table)
        self.skip_guard = SkipGuard(alg.max_consecutive_skips)
        self.logged_by_rewards: list[dict[str, float]] = []  # what reward functions logged this step (log_metric)
        # Training steps begun: the step every logged row carries (step k's metrics and the
        # validation after it at k, the one before training at 0). Lightning's own logging step
        # is one behind inside fit and can slip by one on a resume; this one is in the checkpoint.
        self.steps_trained = 0

    def setup(self, stage: str) -> None:
        """Under sharded weights, every process must make the same forward calls (distributed.py);
        decided from the running strategy, so it holds however the Trainer was built."""
        strategy = self.trainer.strategy
        self.policy.lockstep = None
        if self.trainer.world_size > 1 and shards_weights(strategy):
            if self.generation.backend == "vllm":
                raise ConfigError(
                    f"generation.backend=vllm with {type(strategy).__name__}: the weights are "
                    "sharded and vLLM needs whole ones; use DDP, or generation.backend=auto"
                )
            self.policy.lockstep = lambda decision: strategy.reduce_boolean_decision(decision, all=True)

    def teardown(self, stage: str) -> None:
        self.policy.lockstep = None  # the policy used after fit (one process sampling) must not vote
        if self.agent is not None:
            self.agent.close()
        if stage == "fit" and self.async_rollouts is not None:
            self.async_rollouts.close()
            self.async_rollouts = None

    def on_fit_start(self) -> None:
        # Here, not in setup: the strategy has moved the weights to their device by now, and a
        # checkpoint's rollouts in flight have been read.
        if self.generation.max_staleness > 0 and self.async_rollouts is None:
            self.async_rollouts = self._start_async_rollouts()

    def _start_async_rollouts(self) -> AsyncRollouts:
        if self.algorithm.filter_zero_std_groups:
            raise ConfigError(
                "generation.max_staleness > 0 with algorithm.filter_zero_std_groups=true: dynamic sampling decides "
                "how many rounds a step draws from its rewards, which asynchronous rollouts cannot know ahead"
            )
        if not isinstance(self.policy, Policy):
            raise ConfigError("generation.max_staleness > 0 needs a language-model policy (the lean loop samples it)")
        pipeline = AsyncRollouts(
            self.policy,
            self.generation.max_staleness,
            seed=torch.initial_seed(),
            process=self.trainer.global_rank,
            threads=self.generation.sampler_threads,
            device=self.generation.sampler_device or str(self.device),
        )
        if self._async_state is not None:
            pipeline.load_state(self._async_state)
            self._async_state = None
        return pipeline

    def _async_rollout(self, batch: dict[str, list[Any]]) -> Rollout:
        """This step's rollout, generated ahead (policy/async_rollouts.py); then the rollouts of the
        next max_staleness steps are sent to the sampler, from the weights as they are now."""
        pipeline, step, group_size = self.async_rollouts, self.steps_trained, self.algorithm.group_size
        version = step - 1  # training steps whose updates the weights now hold
        if step not in pipeline.pending:  # the first step, or a resume without rollouts in flight
            pipeline.submit(step, batch, self.prompt_key, group_size, self.train_sampling, version)
        rollout, sampled_at = pipeline.take(step, batch[self.prompt_key], self.device)
        if rollout.sampling_logprobs is None:
            raise ConfigError(
                "generation.max_staleness > 0 needs the lean generation loop, and generation.backend=auto picked "
                "transformers' generate for this model type (grpo_lightning.policy.generation.loop.LOOP_MODEL_TYPES)"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "upcoming_train_batch"):
            raise ConfigError(
                "generation.max_staleness > 0 generates ahead from the prompts of future steps, which only a "
                "PromptDataModule knows (trainer.fit(module, datamodule=PromptDataModule(...)))"
            )
        # Always max_staleness ahead, past max_steps too: a checkpoint then holds what a longer run
        # continued from it trains on next (the last steps' extra rollouts are the price).
        for ahead in range(step + 1, step + self.generation.max_staleness + 1):
            if ahead not in pipeline.pending:
                upcoming = datamodule.upcoming_train_batch(ahead - 1)
                pipeline.submit(ahead, upcoming, self.prompt_key, group_size, self.train_sampling, version)
        self.train_means.update({"rollout/staleness": float(version - sampled_at)})
        return rollout

    # -- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        started = time.perf_counter()
        self.steps_trained += 1
        self.train_means.reset()
        self.logged_by_rewards = []
        if is_external(batch):
            experience = external_experience(batch, self.algorithm.group_size)
        else:
            experience = self._generate_experience(batch)
        update = self._prepare_update(experience)
        self._update_policy(update)
        every = self.algorithm.ref_update_every
        if every is not None and self.steps_trained % every == 0:  # TR-DPO: the reference follows the policy
            self.policy.refresh_reference(self.algorithm.ref_update_mix)
        for values, weight in metrics.experience_means(experience, update.advantages):
            self.train_means.update(values, weight=weight)
        if experience.scores is not None:
            self.last_rollout = RolloutSample.from_experience(experience, update.advantages)
        elapsed = time.perf_counter() - started
        tokens_per_s = experience.lengths.sum().item() / elapsed
        self.train_means.update({"perf/step_time_s": elapsed, "perf/tokens_per_s": tokens_per_s})
        if self.algorithm.target_entropy is not None:
            self.train_means.update({"actor/entropy_coef": self.entropy_coef})  # the weight this step used
        means = self.train_means.compute()  # the same on every process
        means |= metrics.logged_metric_means(self.logged_by_rewards, set(means))
        self._log_step_metrics(means)
        if self.algorithm.target_entropy is not None and "actor/entropy" in means:
            alg = self.algorithm
            self.entropy_coef = next_entropy_coef(
                self.entropy_coef, float(means["actor/entropy"]), alg.target_entropy, alg.entropy_coef_step
            )

    def _log_step_metrics(self, metrics: dict[str, Tensor]) -> None:
        """``self.log_dict(metrics, on_step=True, on_epoch=False)``, for a fraction of its cost
        (compat.log_step_metrics); outside a Trainer, as self.log, nothing to log to."""
        if has_trainer(self):
            log_step_metrics(self.trainer, metrics, step=self.steps_trained)

    def _generate_experience(self, batch: dict[str, list[Any]]) -> Experience:
        """Sample and score; with dynamic sampling, more rounds until the groups carry signal."""
        alg = self.algorithm

        def draw(round_index: int):
            prompts = batch if round_index == 0 else self._more_prompts(batch)
            if self.async_rollouts is not None:
                rollout = self._async_rollout(prompts)
            else:
                rollout = self._rollout(prompts, alg.group_size, self.train_sampling)
            scores = self._score(rollout)
            if alg.overlong_buffer_frac is not None:
                buffer = overlong_buffer(self.max_completion_length, alg.overlong_buffer_frac)
                penalty = overlong_penalty(
                    rollout.lengths, self.max_completion_length, buffer, alg.overlong_penalty_factor
                )  # [B]
                scores = scores.with_penalty(penalty)
                self.train_means.update({"reward/overlong_penalty": penalty.mean()}, weight=penalty.numel())
            return rollout, scores

        if not alg.filter_zero_std_groups:
            return experience_from_rollout(*draw(0), alg.group_size)
        rounds_cap = alg.max_generation_rounds or DEFAULT_MAX_GENERATION_ROUNDS
        rollout, scores, rounds, kept = dynamic_sample(
            draw,
            len(batch[self.prompt_key]),
            alg.group_size,
            rounds_cap,
            lockstep=self.policy.lockstep,
            filter_groups_by=alg.filter_groups_by,
        )
        self.train_means.update({"sampling/rounds": rounds, "sampling/kept_group_frac": kept})
        return experience_from_rollout(rollout, scores, alg.group_size)

    def _more_prompts(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The next batch of prompts for another dynamic-sampling round (data.datamodule.refill_stream)."""
        if self._refill is None:
            self._refill = refill_stream(getattr(self.trainer, "datamodule", None) if has_trainer(self) else None)
        return batch if self._refill is None else next(self._refill)

    def _rollout(self, batch: dict[str, list[Any]], group_size: int, sampling: SamplingParams) -> Rollout:
        if self.agent is not None:
            rollout = self.agent.rollout(self.policy, batch, self.prompt_key, group_size, sampling)
            means = self.val_means if has_trainer(self) and self.trainer.validating else self.train_means
            means.update(metrics.agent_means(rollout.episodes, prefix=means.prefix), weight=len(rollout.episodes))
            return rollout
        columns = {key: values for key, values in batch.items() if key != self.prompt_key}
        return self.policy.rollout(batch[self.prompt_key], columns, group_size, sampling)

    def _score(self, rollout: Rollout) -> RewardScores:
        """The reward functions on a rollout, called as TRL calls them (rewards/__init__.py): with the
        completions' token ids, the training progress and, for agents, each episode's conversation and
        environment; what they log with log_metric is logged with the step."""
        tokens = rollout.tokens
        completion_ids = None  # token ids: a language model's actions only
        if isinstance(self.policy, Policy):
            present = tokens.completion_present.bool().cpu()
            completion_ids = [ids[keep].tolist() for ids, keep in zip(tokens.completion_ids.cpu(), present)]
        context: dict[str, Any] = {"trainer_state": self.progress()}
        if rollout.episodes is not None:
            context["conversations"] = [episode.messages for episode in rollout.episodes]
            context["environments"] = [episode.environment for episode in rollout.episodes]
        prompts, completions, columns = rollout.prompts, rollout.completions, rollout.columns
        chat = columns.get(CHAT_MESSAGES_COLUMN)
        if chat is not None:  # a conversational dataset: messages in, messages out (TRL's form)
            columns = {key: values for key, values in columns.items() if key != CHAT_MESSAGES_COLUMN}
            prompts = [p if messages is None else messages for p, messages in zip(prompts, chat)]
            completions = [
                c if messages is None else [{"role": "assistant", "content": c}]
                for c, messages in zip(completions, chat)
            ]
        scores = self.reward(
            prompts,
            completions,
            columns,
            device=self.device,
            completion_ids=completion_ids,
            context=context,
            turns=None if rollout.episodes is None else [episode.turns for episode in rollout.episodes],
        )
        self.logged_by_rewards.append(scores.logged_metrics)
        return scores

    def progress(self) -> TrainingProgress:
        """Where training stands, for reward functions (TRL's ``trainer_state``)."""
        max_steps = self.max_training_steps
        return TrainingProgress(
            global_step=max(self.steps_trained - 1, 0),
            max_steps=max_steps if max_steps is not None else -1,
            epoch=self.current_epoch if has_trainer(self) else 0,
        )

    @torch.no_grad()
    def _prepare_update(self, experience: Experience) -> UpdateBatch:
        """Old and reference log-probs (computed once per batch, only when used), then advantages."""
        alg = self.algorithm
        if alg.rollout_correction is not None and experience.sampling_logprobs is None and not self._warned_correction:
            warnings.warn(NOTHING_TO_CORRECT.format(alg.rollout_correction), stacklevel=2)
            self._warned_correction = True
        turn_rewards = experience.scores is not None and experience.scores.turn_rewards is not None
        if alg.gamma != 1.0 and alg.adv_estimator not in PER_TOKEN and not turn_rewards and not self._warned_gamma:
            warnings.warn(GAMMA_UNUSED, stacklevel=2)
            self._warned_gamma = True
        update, logged = prepare_update(experience, alg, self._score_in_chunks, self.kl_estimator)
        self.train_means.update(logged, weight=experience.rewards.numel())
        return update

    def _score_in_chunks(self, tokens: TokenBatch, reference: bool) -> Tensor:
        rows = torch.arange(tokens.prompt_ids.size(0), device=tokens.prompt_ids.device)
        chunk = self.algorithm.micro_batch_size or self.algorithm.mini_batch_size or rows.numel()
        options = dict(temperature=self.generation.temperature, with_entropy=False, reference=reference)
        score = self.policy.logprobs_and_entropy
        return torch.cat([score(tokens.rows(index), **options)[0] for index in rows.split(chunk)])

    def _update_policy(self, update: UpdateBatch) -> None:
        alg = self.algorithm
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        num_rows = update.prompt_ids.size(0)
        mini = alg.mini_batch_size or num_rows
        for mini_rows, micro_batches in mini_batches(
            num_rows, mini, alg.micro_batch_size or mini, alg.num_iterations, self.device
        ):
            # Per process: what the mini-batch's mean runs over, averaged over processes, as DDP
            # averages their gradients: a token mean is then over every process's tokens.
            mini_units = mean_over_processes(self.loss_aggregation.units(update.completion_mask[mini_rows].float()))
            logged, finite = [], True
            for micro_rows in micro_batches:
                part = update.rows(micro_rows)
                loss, stats = self._micro_batch_loss(part)
                # Scale so the accumulated gradient is that of the mini-batch's aggregate (a mean
                # over sequences or over tokens, per algorithm.loss_agg); a per-process mean may be
                # below 1, and where it is 0 so is every units.
                units = self.loss_aggregation.units(part.completion_mask.float())
                self.manual_backward(loss * (units / mini_units.clamp(min=1e-6)))
                finite = finite and bool(loss.isfinite())
                stats = {f"actor/{k}": v for k, v in stats.items()} | {"actor/loss": loss.detach()}
                logged += metrics.micro_batch_means(stats, units, part.completion_mask.sum().float())
            # Clipped to max_grad_norm (if set); the norm before clipping is logged.
            max_norm = alg.max_grad_norm if alg.max_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(list(self.policy.trainable_parameters()), max_norm)
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
            # reference pass would otherwise run with a weight-sized gradient still held.
            optimizer.zero_grad(set_to_none=True)
        self.train_means.update({"actor/skipped_updates": self.skip_guard.total})

    def _micro_batch_loss(self, part: UpdateBatch) -> tuple[Tensor, dict[str, Tensor]]:
        alg = self.algorithm
        # With no entropy bonus the entropy is only logged: computed without grad.
        logprobs, entropy = self.policy.logprobs_and_entropy(
            part,
            temperature=self.generation.temperature,
            with_entropy=True,
            entropy_grad=self.entropy_coef != 0 or alg.target_entropy is not None,
        )  # [b, T] each
        old = part.old_logprobs if part.old_logprobs is not None else logprobs.detach()
        mask, ref = part.completion_mask, part.ref_logprobs
        return self.objective(
            logprobs, old, part.advantages, mask, ref_logprobs=ref, entropy=entropy, entropy_coef=self.entropy_coef
        )

    # -- validation ------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        rollout = self._rollout(batch, self.val_k, self.val_sampling)
        scores = self._score(rollout)
        if self.val_pass_metric is not None:
            gen = self.generation
            judged = scores.total if gen.val_pass_reward is None else scores.per_function[gen.val_pass_reward]
            passed = (judged >= gen.val_pass_threshold).view(-1, self.val_k)  # [N, k]
            self.val_means.update({self.val_pass_metric: pass_at_k(passed, self.val_k)})
        self.val_means.update(metrics.validation_means(scores))

    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()

    def on_validation_epoch_end(self) -> None:
        # Means over every validation prompt of every process (compute sums across them).
        means = self.val_means.compute()
        log_validation_metrics(self.trainer, means, step=self.steps_trained)
        self.validated_at_step = self.trainer.global_step
        self.last_val_metrics = {name: float(value) for name, value in means.items()}

    # -- checkpoint: what the parameters and optimizer do not hold (see run/checkpoints.py) ---------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skip_guard"] = self.skip_guard.state_dict()
        checkpoint[STEPS_TRAINED_KEY] = self.steps_trained
        checkpoint[ENTROPY_COEF_KEY] = self.entropy_coef
        if self.async_rollouts is not None:  # every process's rollouts in flight (a collective)
            checkpoint[ASYNC_ROLLOUTS_KEY] = per_process(self.async_rollouts.state())
        if self.validated_at_step is not None:  # a run killed right after this save keeps it
            checkpoint[LAST_VALIDATION_KEY] = {"global_step": self.validated_at_step, "metrics": self.last_val_metrics}
        if not self.checkpoint_contents.save_frozen_weights:
            if self._frozen_fingerprint is None:
                names = slim_checkpoint.frozen_weight_names(self)
                self._frozen_fingerprint = names, slim_checkpoint.fingerprint(self, names)
            slim_checkpoint.leave_out_frozen_weights(checkpoint, *self._frozen_fingerprint)
        if not self.checkpoint_contents.save_optimizer_state:
            slim_checkpoint.leave_out_optimizer_moments(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "skip_guard" in checkpoint:
            self.skip_guard.load_state_dict(checkpoint["skip_guard"])
        self.resumed_at_step = checkpoint["global_step"]
        self.steps_trained = steps_trained_in_checkpoint(checkpoint)
        self.entropy_coef = checkpoint.get(ENTROPY_COEF_KEY, self.algorithm.entropy_coef)
        in_flight = checkpoint.get(ASYNC_ROLLOUTS_KEY)
        if in_flight is not None and self.generation.max_staleness > 0:
            mine = in_flight[process_rank()] if process_rank() < len(in_flight) else {}
            if self.async_rollouts is not None:
                self.async_rollouts.load_state(mine)
            else:
                self._async_state = mine
        validation = checkpoint.get(LAST_VALIDATION_KEY)
        if validation is not None and validation["global_step"] == checkpoint["global_step"]:
            self.validated_at_step, self.last_val_metrics = validation["global_step"], dict(validation["metrics"])
        slim_checkpoint.put_back_frozen_weights(self, checkpoint)
        if not (has_trainer(self) and shards_weights(self.trainer.strategy)):  # sharded ones are not a dict
            slim_checkpoint.check_weights_fit(self, checkpoint)
        slim_checkpoint.warn_if_moments_left_out(checkpoint)

    # -- optimization ----------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer(self.policy.trainable_parameters(), self.optim)
