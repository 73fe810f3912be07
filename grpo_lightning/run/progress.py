"""Console progress: a rich progress bar on a terminal, one line every N steps elsewhere.

On a terminal the bar's postfix shows the step's reward, KL and step time. Redirected output
(CI, SLURM ``.out`` files) gets no bar, whose redraws would fill the log, but a line such as::

    step 20/60 | reward 0.531 | kl 0.0012 | val/reward 0.450 | 1.24 s/step | 0:00:25 elapsed
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar

from grpo_lightning.run.checkpoints import AfterItsValidation

# Postfix label -> metric, first found wins: the KL to the reference when beta > 0, else the
# KL between the sampling and the updated policy.
POSTFIX: dict[str, tuple[str, ...]] = {
    "reward": ("reward/mean",),
    "kl": ("actor/grpo_kl", "actor/approx_kl"),
    "val/reward": ("val/reward/mean",),
    "step_s": ("perf/step_time_s",),
}


def step_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The postfix values present in ``metrics`` (Lightning's callback_metrics)."""
    summary = {}
    for label, names in POSTFIX.items():
        name = next((n for n in names if n in metrics), None)
        if name is not None:
            summary[label] = float(metrics[name])
    return summary


def _fmt(label: str, value: float) -> str:
    return f"{value:.4f}" if label == "kl" else f"{value:.3f}"


class GRPOProgressBar(RichProgressBar):
    """Lightning's rich bar with reward, KL and step time in its postfix."""

    def _get_train_description(self, current_epoch: int) -> str:
        # Runs are bounded by steps (max_epochs=-1): Lightning's "Epoch 0/-2" would mislead.
        return f"GRPO (data epoch {current_epoch})"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics | {label: _fmt(label, value) for label, value in step_summary(trainer.callback_metrics).items()}


class ConsoleLog(AfterItsValidation):
    """One line after the first training step, every ``every_n_steps`` steps and after the last,
    and one as each validation starts and ends, for non-terminals: on a real model a step or a
    validation takes minutes, and a log that stays silent looks like a hang.

    A step that is validated gets its line after the validation, so that ``val/reward`` is that
    step's, not the one before."""

    def __init__(self, every_n_steps: int, total_steps: int, optimizer_steps_per_step: int = 1):
        self.every_n_steps = every_n_steps
        self.total_steps = total_steps
        self.optimizer_steps_per_step = optimizer_steps_per_step
        self.step = 0
        self.started: Optional[float] = None
        self.validation_started: Optional[float] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.step = trainer.global_step // self.optimizer_steps_per_step  # nonzero when resumed

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.step += 1
        if self.step == 1 or self.step % self.every_n_steps == 0 or self.step == self.total_steps:
            self.after_step_or_its_validation(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validation_started = time.perf_counter()
        if trainer.is_global_zero:
            when = f"after step {self.step}" if self.step else "before training"
            print(f"validating {when} ({trainer.num_val_batches[0]} batches)", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validation_started is not None and trainer.is_global_zero and not trainer.sanity_checking:
            seconds = time.perf_counter() - self.validation_started
            reward = trainer.callback_metrics.get("val/reward/mean")
            result = f"val/reward {float(reward):.3f} | " if reward is not None else ""
            print(f"validation done: {result}{seconds:.1f} s", flush=True)
        self.validation_started = None
        super().on_validation_end(trainer, pl_module)

    def after_step(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            print(self.line(trainer.callback_metrics), flush=True)

    def line(self, metrics: dict[str, Any]) -> str:
        parts = [f"step {self.step}/{self.total_steps}"]
        for label, value in step_summary(metrics).items():
            parts.append(f"{value:.2f} s/step" if label == "step_s" else f"{label} {_fmt(label, value)}")
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        parts.append(f"{timedelta(seconds=round(elapsed))} elapsed")
        return " | ".join(parts)


def progress_callbacks(
    enabled: bool, every_n_steps: int, total_steps: int, optimizer_steps_per_step: int = 1
) -> list[Callback]:
    """The bar on a terminal; the periodic line otherwise (or nothing when disabled)."""
    if not enabled:
        return []
    if sys.stdout.isatty():
        return [GRPOProgressBar()]
    return [ConsoleLog(every_n_steps, total_steps, optimizer_steps_per_step)] if every_n_steps > 0 else []
