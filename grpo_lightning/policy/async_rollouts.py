"""Asynchronous rollouts: generation runs ahead of training by at most ``max_staleness`` steps.

With ``generation.max_staleness = k > 0``, training step t trains on a rollout that a sampler thread
generated while the trainer was busy with the steps before: at the start of step t the rollouts of
steps t + 1 .. t + k are sent to the thread, each from a snapshot of the weights as they are then
(after t - 1 optimizer steps), so the rollout a step trains on was sampled by a policy at most k
versions old. The prompts come from the datamodule, which knows the batch of every future step
(``PromptDataModule.upcoming_train_batch``); the batch Lightning then hands the step is checked
against them.

What keeps it exact:

* the thread samples with its own snapshot of the weights (k copies, one per step in flight, each
  refreshed only once its previous rollout is done), never with the weights being trained;
* its draws come from a generator seeded by (seed, process, step), not from torch's global one,
  so neither side's random numbers depend on the other's timing;
* a checkpoint waits for the rollouts in flight and keeps them; a resumed run trains on them.

Every rollout carries the sampler's log-probs (the PPO ratio's old policy, or with
``algorithm.rollout_correction`` the sampler side of the correction) and the policy version that
sampled it; the step logs ``rollout/staleness`` (training steps between that version and the
trainer's). The lean generation loop only (generation.backend=loop, or auto picking it); neither
dynamic sampling nor sharded weights.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields, replace
from typing import Any, Optional

import torch

from grpo_lightning.policy.base import Policy, SamplingParams
from grpo_lightning.types import Rollout, TokenBatch

SEED_STRIDE = 1_000_003
"""Seeds of the sampler's generators: seed * stride**2 + process * stride + step, distinct per step."""


def sampler_copy(policy: Policy, device: Optional[str] = None) -> Policy:
    """A copy of the policy to sample with: its weights (on ``device``, else where they are), no
    reference model, no gradients."""
    reference = getattr(policy, "reference_model", None)
    policy.reference_model = None
    try:
        copied = copy.deepcopy(policy)
    finally:
        policy.reference_model = reference
    copied.requires_grad_(False)
    copied.lockstep = None
    return copied if device is None else copied.to(device)


def rollout_to(rollout: Rollout, device: torch.device) -> Rollout:
    """The rollout with its tensors on ``device`` (the trainer's, for a sampler elsewhere)."""
    tokens = TokenBatch(
        *(None if (t := getattr(rollout.tokens, f.name)) is None else t.to(device) for f in fields(rollout.tokens))
    )
    moved = {
        f.name: getattr(rollout, f.name).to(device)
        for f in fields(rollout)
        if isinstance(getattr(rollout, f.name), torch.Tensor)
    }
    return replace(rollout, tokens=tokens, **moved)


class AsyncRollouts:
    """Rollouts of future steps, generated on a thread from weight snapshots (module docstring)."""

    def __init__(
        self,
        policy: Policy,
        max_staleness: int,
        seed: int,
        process: int = 0,
        threads: Optional[int] = None,
        device: Optional[str] = None,
    ):
        if max_staleness < 1:
            raise ValueError(f"max_staleness must be >= 1 for asynchronous rollouts (got {max_staleness})")
        self.policy, self.max_staleness = policy, max_staleness
        self.seed, self.process = seed, process
        self.snapshots = [sampler_copy(policy, device) for _ in range(max_staleness)]
        # torch's thread count is per thread: the sampler may take fewer cores than the trainer.
        initializer = None if threads is None else (lambda: torch.set_num_threads(threads))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-sampler", initializer=initializer)
        self.pending: dict[int, tuple[Future, int, list[Any]]] = {}  # step -> (rollout, version, prompts)

    def _seed(self, step: int) -> int:
        """Distinct per (seed, process, step), and within the 63 bits a torch generator takes."""
        return ((self.seed * SEED_STRIDE + self.process) * SEED_STRIDE + step) % (2**63 - 1)

    @torch.no_grad()
    def submit(
        self,
        step: int,
        batch: dict[str, list[Any]],
        prompt_key: str,
        group_size: int,
        sampling: SamplingParams,
        version: int,
    ) -> None:
        """Send step ``step``'s rollout to the thread, from the weights as they are now (``version``:
        optimizer-step count, in training steps). Its snapshot's previous rollout must be done."""
        snapshot = self.snapshots[step % self.max_staleness]
        targets = dict(snapshot.named_parameters())
        for name, source in self.policy.named_parameters():
            if name in targets:  # the reference model's weights are not in a snapshot
                targets[name].copy_(source, non_blocking=False)
        columns = {key: values for key, values in batch.items() if key != prompt_key}
        sampling = replace(sampling, seed=self._seed(step), record_logprobs=True)
        prompts = batch[prompt_key]
        future = self.executor.submit(snapshot.rollout, prompts, columns, group_size, sampling)
        self.pending[step] = (future, version, list(prompts))

    def take(self, step: int, prompts: list[Any], device: torch.device) -> tuple[Rollout, int]:
        """Step ``step``'s rollout, on the trainer's ``device``, and the version that sampled it; the
        prompts must be the ones it was generated for (the batch Lightning gave the step)."""
        future, version, expected = self.pending.pop(step)
        if list(prompts) != expected:
            raise RuntimeError(
                f"asynchronous rollouts: step {step}'s prompts are not those generated ahead for it; the "
                "datamodule's order changed under the sampler (report this as a bug)"
            )
        return rollout_to(future.result(), device), version

    def state(self) -> dict[int, dict[str, Any]]:
        """The rollouts in flight, waited for, as plain tensors and lists (for a checkpoint)."""
        return {
            step: {"rollout": rollout_to_dict(future.result()), "version": version, "prompts": prompts}
            for step, (future, version, prompts) in sorted(self.pending.items())
        }

    def load_state(self, state: dict[int, dict[str, Any]]) -> None:
        self.pending = {}
        for step, saved in state.items():
            done: Future = Future()
            done.set_result(rollout_from_dict(saved["rollout"]))
            self.pending[int(step)] = (done, saved["version"], saved["prompts"])

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def rollout_to_dict(rollout: Rollout) -> dict[str, Any]:
    """A rollout as built-in types and CPU tensors (gathered across processes, pickled into a
    checkpoint): nothing of ours, nothing on a GPU."""

    def plain(value: Any) -> Any:
        return value.cpu() if isinstance(value, torch.Tensor) else value

    out = {f.name: plain(getattr(rollout, f.name)) for f in fields(rollout) if f.name != "tokens"}
    out["tokens"] = {f.name: plain(getattr(rollout.tokens, f.name)) for f in fields(rollout.tokens)}
    return out


def rollout_from_dict(saved: dict[str, Any]) -> Rollout:
    values = dict(saved)
    values["tokens"] = TokenBatch(**values["tokens"])
    return Rollout(**values)
