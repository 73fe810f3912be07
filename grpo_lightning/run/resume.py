"""Exact resume: every process's random states and the settings a resumed run must keep."""

from __future__ import annotations

import random
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from grpo_lightning.config import ConfigError
from grpo_lightning.distributed import is_distributed, per_process, rank, world_size


def capture_rng_state() -> dict[str, Any]:
    """Every random state a GRPO step draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class RNGStateCallback(Callback):
    """Saves the random states in the checkpoint; restores them right before the next step.

    Restoring at the first training batch rather than at load time matters: building the
    optimizer and the dataloader iterators between load and the first step may draw from the
    global generators.
    """

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None
        self._before_validation: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        # Every process draws differently (their seeds are offset by rank) and only rank 0
        # writes the file, so each process's states travel in it, indexed by rank.
        own = capture_rng_state()
        if not is_distributed():
            return {"rng": own}
        return {"rng": own, "rng_per_rank": per_process(own)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("rng_per_rank")
        world = world_size()
        if world > 1 and per_rank is None:
            raise ConfigError(
                f"this checkpoint was written by one process; resuming it on {world} would give "
                "every process the same random state. Resume with the process count it was saved with"
            )
        if per_rank is not None and len(per_rank) != world:
            raise ConfigError(
                f"this checkpoint was written by {len(per_rank)} processes and is resumed on {world}; "
                "exact resume needs the same number (trainer.devices x trainer.num_nodes)"
            )
        self._pending = per_rank[rank()] if per_rank is not None else state_dict["rng"]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before_validation = capture_rng_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._before_validation is not None:
            restore_rng_state(self._before_validation)
            self._before_validation = None


RESUME_FIXED_SETTINGS = (
    "seed",
    "data.batch_size",
    "algorithm.group_size",
    "algorithm.mini_batch_size",
    "algorithm.num_iterations",
)
"""What a checkpoint's counters mean depends on: the prompt stream's order and position (seed,
batch size) and how many optimizer steps, which Lightning counts, make one training step."""


class RunSettingsCallback(Callback):
    """Saves :data:`RESUME_FIXED_SETTINGS` in the checkpoint; a resume with other values is
    refused, naming them (it would train the wrong number of steps or on the wrong prompts)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        changed = [
            f"{key}={state_dict[key]} (now {value})"
            for key, value in self.settings.items()
            if key in state_dict and state_dict[key] != value
        ]
        if changed:
            raise ConfigError(
                f"ckpt_path: the checkpoint was written with {', '.join(changed)}; resume with the "
                "run's own values (trainer.max_steps, logging and checkpoint cadence may change)"
            )
