"""The reference GRPO step. Read this first: the same step as module.py, as one page of math.

GRPOModule's training step (module.py) computes exactly this update for one batch of rollouts, with
machinery for speed and memory that this file leaves out: no chunked log-softmax, no length buckets,
no shared prompts, no fused output head, no micro-batches, no logging, no skipped updates, one
process. tests/algo/test_reference.py holds the module to it for every preset in conf/algorithm/.
Shapes: B completions (G consecutive rows per prompt), P prompt tokens, T completion tokens, V ids.

For a prompt q with G completions o_i, rewards r_i and ratios rho_{i,t} = pi(o_{i,t}) / pi_old(o_{i,t}):

    A_i   = (r_i - mean(r)) / (std(r) + eps)                   [GRPO] sec. 4.1.2, outcome supervision
    A_i,t = sum_{steps j ending at or after t} r~_j              [GRPO] sec. 4.1.3, process supervision,
            with r~ = (r - mean(R)) / (std(R) + eps) over all step rewards R of the group
    J     = 1/G sum_i 1/|o_i| sum_t { min(rho A_i, clip(rho, 1 - e_low, 1 + e_high) A_i)
                                      - beta KL_{i,t} }         [GRPO] eq. 3
    KL_t  = pi_ref/pi - log(pi_ref/pi) - 1                      [GRPO] eq. 4 (k3; k1, k2 in algo/kl.py)
    loss  = -J - entropy_coef * H                               (the entropy bonus is ours)

  [GRPO]    Shao et al. 2024, DeepSeekMath, arXiv:2402.03300.
  [DAPO]    Yu et al. 2025, arXiv:2503.14476: e_high > e_low (sec. 3.1, clip-higher); one mean over all
            tokens of the batch, not 1/G sum_i 1/|o_i| (sec. 3.3, loss_agg=token-mean); truncated
            completions out of the loss (sec. 3.4, mask_truncated_completions).
  [Dr.GRPO] Liu et al. 2025, arXiv:2503.20783, sec. 3.1: no division by std(r) (adv_estimator=dr_grpo),
            the token sum divided by the max completion length (loss_agg=seq-mean-token-sum-norm).
  [GSPO]    Zheng et al. 2025, arXiv:2507.18071: the sequence ratio exp(mean_t log rho_{i,t}) instead of
            rho_{i,t}, clipped per sequence (policy_loss=gspo, in the paper's GSPO-token form).
  [CISPO]   MiniMax 2025, arXiv:2506.13585: -sg(clip(rho)) A log pi, every token keeps a gradient.
  [RLOO]    Ahmadian et al. 2024, arXiv:2402.14740: the mean of the other G-1 rewards as the baseline;
            kl_in_reward makes the KL a cost in the reward, r_i - beta sum_t KL_{i,t} ([GRPO] eq. 2).
  [Rollout correction] algo/correction.py: with rollout_correction and the sampler's log-probs, the
            old log-probs are the trainer's and each token's advantage is weighted by the correction.
  [80/20]   Wang et al. 2025, arXiv:2506.01939: with top_entropy_quantile, only that fraction of the
            tokens, those of highest entropy in the mini-batch, keep their policy-gradient term.
  [R++]     Hu 2025, REINFORCE++, arXiv:2501.03262: A_t = r - beta sum_{k>=t} KL_k (the KL still to
            come), whitened over every completion token of the batch (adv_estimator=reinforce_pp).

Where it departs from the papers (as module.py does): the old policy's log-probs are not recomputed
when they cannot differ from the current ones (one pass, one mini-batch), so rho = exp(logp -
sg(logp)) = 1, whose gradient is REINFORCE's; the entropy bonus; the reference policy is the initial
one for the whole run (GRPO's Algorithm 1 refreshes it); log-probs are those of the
temperature-scaled distribution, top-k / top-p truncation not reflected (as TRL and verl). Not a
departure: std is the population std, as in GRPO's formula (TRL and verl divide by G - 1).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from grpo_lightning.algo.advantages import (
    KL_IN_PROCESS_REWARDS,
    PER_TOKEN,
    TOKEN_ADVANTAGES,
    TOKEN_LEVEL_SCALE,
    compute_advantages,
    get_adv_estimator,
    outcome_at_last_token,
)
from grpo_lightning.algo.correction import ROLLOUT_CORRECTIONS
from grpo_lightning.algo.kl import get_kl_estimator
from grpo_lightning.algo.losses import build_policy_loss, get_loss_aggregation, top_entropy_tokens


def completion_scores(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float):
    """Log-probs [B, T] of the completion tokens and the entropies [B, T] of their distributions."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    # Prompts are left-padded: positions count from each row's first real token, as in generation.
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, P+T]
    output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    logits = getattr(output, "logits", output)  # [B, P+T, V]
    # Position p predicts token p + 1; the completions were sampled from softmax(logits / temperature).
    logp = torch.log_softmax(logits[:, prompt_ids.size(1) - 1 : -1].float() / temperature, dim=-1)  # [B, T, V]
    return logp.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(dim=-1)


def reference_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    alg: Any,
    batch: dict[str, Any],
    *,
    ref_model: Optional[Callable[..., Any]] = None,
    temperature: float = 1.0,
    max_length: Optional[int] = None,
    scheduler: Optional[Any] = None,
) -> dict[str, Any]:
    """One policy update on ``batch``, in data/external.py's form (prompt_ids, prompt_mask, completion_ids,
    completion_mask, rewards and/or token_rewards; optional logprobs of the sampling policy, ref_logprobs,
    truncated, group_size). ``alg``: GRPOConfig's fields. ``model(input_ids=, attention_mask=,
    position_ids=)`` returns logits [B, L, V] (or an output with ``.logits``); ``ref_model`` scores the
    reference when beta > 0 and the batch has no ref_logprobs. ``max_length``: generation.max_new_tokens
    (default T). Returns the advantages and what the module logs as actor/loss and actor/grad_norm."""
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]  # [B, P]
    completion_ids = batch["completion_ids"]  # [B, T]
    mask = batch["completion_mask"].float()  # [B, T] the sampled tokens: the loss's
    attended = batch.get("completion_attention_mask", batch["completion_mask"])  # [B, T] multi-turn: tool results too
    num_rows, device = completion_ids.size(0), completion_ids.device
    all_rows = torch.arange(num_rows, device=device)
    group_size = int(batch.get("group_size", alg.group_size))
    group_ids = all_rows // group_size  # [B]
    mini = alg.mini_batch_size or num_rows
    kl_estimator = get_kl_estimator(alg.kl_estimator)

    def scores(net: Callable[..., Any], rows: Tensor) -> tuple[Tensor, Tensor]:  # [b, T] each
        tensors = (prompt_ids, prompt_mask, completion_ids, attended)
        return completion_scores(net, *(t[rows] for t in tensors), temperature)

    old, ref = batch.get("logprobs"), batch.get("ref_logprobs") if alg.beta > 0 else None  # [B, T] or None
    sampler = old if alg.rollout_correction is not None else None  # the sampling engine's log-probs
    with torch.no_grad():  # both before the first step: the policy that sampled, and the initial one
        if sampler is not None:  # the ratio compares the trainer with itself; the correction bridges
            old = scores(model, all_rows)[0]
        if old is None and (alg.num_iterations > 1 or mini < num_rows or alg.kl_in_reward):
            old = scores(model, all_rows)[0]
        if ref is None and alg.beta > 0:
            ref = scores(ref_model, all_rows)[0]
    token_rewards = batch.get("token_rewards")  # [B, T] or None
    rewards = batch["rewards"].float() if "rewards" in batch else (token_rewards * mask).sum(dim=1)  # [B]
    per_token = alg.adv_estimator in PER_TOKEN
    if per_token and token_rewards is None:  # REINFORCE++: the outcome reward on the last token
        token_rewards = outcome_at_last_token(rewards, mask)
    if alg.kl_in_reward:
        if token_rewards is not None and not per_token and alg.token_advantage == "process_supervision":
            raise ValueError(KL_IN_PROCESS_REWARDS)
        # Summed over completion tokens only: padding may hold anything, -inf from an external server.
        kl = torch.where(mask > 0, kl_estimator(old, ref), 0.0)  # [B, T]
        rewards = rewards - alg.beta * kl.sum(dim=1)
        token_rewards = None if token_rewards is None else token_rewards.float() - alg.beta * kl
        ref = None  # paid in the reward, so not again in the loss
    scale = alg.scale_rewards or ("group" if alg.normalize_by_std else "none")
    if per_token:
        advantages = get_adv_estimator(alg.adv_estimator)(
            token_rewards.float(), mask, group_ids=group_ids, group_size=group_size, eps=alg.adv_eps, gamma=alg.gamma
        )  # [B, T]
    elif token_rewards is None:
        advantages = compute_advantages(
            alg.adv_estimator, rewards, group_ids=group_ids, group_size=group_size, eps=alg.adv_eps, scale_rewards=scale
        ).unsqueeze(1)  # [B, 1]
    else:  # process rewards, in the configured token-level form
        scale = TOKEN_LEVEL_SCALE[alg.adv_estimator] or scale
        step_mask = batch.get("token_reward_mask")
        advantages = TOKEN_ADVANTAGES[alg.token_advantage](
            token_rewards.float(),
            mask,
            step_mask=None if step_mask is None else step_mask.bool() & (mask > 0),
            group_ids=group_ids,
            gamma=alg.gamma,
            eps=alg.adv_eps,
            scale_rewards=scale,
        )  # [B, T]
    if sampler is not None:  # [Rollout correction] a weight per token: algo/correction.py
        sampler = torch.where(mask > 0, sampler.float(), 0.0)
        advantages = advantages * ROLLOUT_CORRECTIONS[alg.rollout_correction](old, sampler, advantages, mask, alg)
    if alg.mask_truncated_completions and batch.get("truncated") is not None:
        mask = mask * ~batch["truncated"].bool().unsqueeze(1)  # after the advantages: their groups stay whole

    policy_loss = build_policy_loss(alg.policy_loss, alg)
    aggregation = get_loss_aggregation(alg.loss_agg)
    length = max_length or mask.size(1)

    def aggregate(values: Tensor, m: Tensor) -> Tensor:
        return aggregation(values, m, length)

    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = alg.max_grad_norm if alg.max_grad_norm is not None else float("inf")
    logged, norms = [], []
    for _ in range(alg.num_iterations):
        # The module's draw, so that the two can be compared: one permutation per pass, global generator.
        order = all_rows[torch.randperm(num_rows, device=device)] if mini < num_rows else all_rows
        for rows in order.split(mini):
            m = mask[rows]  # [b, T]
            logp, entropy = scores(model, rows)  # [b, T] each, with grad
            # Padding gets the current log-probs: ratio 1 and KL 0 there, never an inf * 0 = NaN.
            current = logp.detach()
            old_rows = current if old is None else torch.where(m > 0, old[rows], current)
            adv_rows = advantages[rows]
            if alg.top_entropy_quantile is not None:  # [80/20] the policy gradient of the forking tokens only
                adv_rows = adv_rows * top_entropy_tokens(entropy, m, alg.top_entropy_quantile)
            loss, _ = policy_loss(logp, old_rows, adv_rows, m, aggregate)
            if ref is not None:
                loss = loss + alg.beta * aggregate(kl_estimator(logp, torch.where(m > 0, ref[rows], current)), m)
            loss = loss - alg.entropy_coef * aggregate(entropy, m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm))
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            logged.append((loss.detach(), aggregation.units(m).clamp(min=1e-6)))
    optimizer.zero_grad(set_to_none=True)
    units = sum(u for _, u in logged)
    return {
        "advantages": advantages,
        "actor/loss": float(sum(loss * u for loss, u in logged) / units),  # weighted by what each mean ran over
        "actor/grad_norm": float(torch.stack(norms).mean()),  # before clipping, a mean over optimizer steps
    }
