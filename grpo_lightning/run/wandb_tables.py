"""W&B completions tables and histograms, from the last rollout the module kept.

The module stays an orchestrator: each training step it stores a :class:`RolloutSample` (the
step's prompts, completions, rewards and advantages, detached) in ``module.last_rollout``; this
callback turns it into a ``wandb.Table`` every ``logger.log_completions_every`` steps, on rank 0.
Each logged table is a new object under the key ``completions``, so W&B keeps one version per
step (``media/table/completions_<step>_*.table.json``) instead of overwriting the last one.
Completions and prompts that are not text become cells W&B can show: an image tensor [H, W]
(a diffusion policy's sample) a ``wandb.Image``, anything else (continuous actions) its text.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from grpo_lightning.types import RolloutSample


def wandb_logger(trainer: L.Trainer) -> Optional[WandbLogger]:
    return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)


class CompletionsTable(L.Callback):
    """Every ``every_n_steps`` training steps: a completions table and reward/length histograms."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps
        self.steps_seen = 0

    # In the checkpoint, so that a resumed run logs its tables at the same steps.
    def state_dict(self) -> dict[str, int]:
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.steps_seen = state_dict["steps_seen"]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps_seen += 1
        sample: Optional[RolloutSample] = getattr(pl_module, "last_rollout", None)
        logger = wandb_logger(trainer)
        if sample is None or logger is None or not trainer.is_global_zero:
            return
        if (self.steps_seen - 1) % self.every_n_steps:
            return
        import wandb

        logger.experiment.log(
            {
                "completions": wandb.Table(
                    columns=sample.columns(), data=[list(map(_cell, row)) for row in sample.rows()]
                ),
                "histograms/reward": wandb.Histogram(sample.total.float().cpu().numpy()),
                "histograms/response_length": wandb.Histogram(sample.lengths.float().cpu().numpy()),
                # The x-axis every metric is logged against (training steps so far).
                "trainer/global_step": pl_module.steps_trained,
            }
        )


def _cell(value: Any) -> Any:
    """A table cell W&B can serialize: numbers and text as they are, images as images."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    import torch
    import wandb

    if isinstance(value, torch.Tensor) and value.dim() == 2:  # an image in [-1, 1]
        return wandb.Image(((1 - value.detach().float().cpu().clamp(-1, 1)) * 127.5).byte().numpy())
    return str(value)
