"""Experiment loggers by name (``logger.kind``): csv, wandb, none.

``wandb`` also keeps ``metrics.csv`` in the run directory, so that ``reward_curve.png`` and
``grpo-plot`` work on W&B runs too (and offline runs have a plain-text record).
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from grpo_lightning.compat import steps_trained_in_checkpoint
from grpo_lightning.config import ConfigError, LoggerConfig

WANDB_ID_KEY = "wandb_run_id"


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger that, for a resumed run, keeps the rows logged before the checkpoint's step.

    Lightning's writer deletes an existing metrics.csv; a resumed run would lose its history.
    Rows after ``keep_through_step`` (logged after the checkpoint by a run that was then killed)
    are dropped, since the resumed run logs those steps again.
    """

    def __init__(self, *args: Any, keep_through_step: Optional[int] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._keep_through_step = keep_through_step

    @property
    def experiment(self) -> Any:
        if self._experiment is not None or self._keep_through_step is None or rank_zero_only.rank != 0:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        header, kept = None, []
        if path.is_file():
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                header = reader.fieldnames
                kept = [row for row in reader if int(row["step"]) <= self._keep_through_step]
        writer = super().experiment  # deletes metrics.csv
        if header:
            with open(path, "w", newline="") as handle:
                out = csv.DictWriter(handle, fieldnames=header)
                out.writeheader()
                out.writerows(kept)
            writer.metrics_keys = sorted(header)  # the header grows from the old columns on
        return writer


def _csv(cfg: LoggerConfig, run_dir: str, resume_step: Optional[int] = None) -> Logger:
    # name="" and version="" put metrics.csv directly in the run directory.
    return ResumableCSVLogger(save_dir=run_dir, name="", version="", keep_through_step=resume_step)


def _wandb(cfg: LoggerConfig, run_dir: str, resume_step: Optional[int] = None) -> list[Logger]:
    wandb = WandbLogger(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags),
        name=cfg.run_name,
        id=cfg.id,
        save_dir=run_dir,
        offline=cfg.offline,
        resume="allow" if cfg.id else None,
    )
    return [wandb, _csv(cfg, run_dir, resume_step)]  # W&B first: trainer.logger is the first


LoggerOrLoggers = Union[Logger, list[Logger], None]

LOGGER_BUILDERS: dict[str, Callable[..., LoggerOrLoggers]] = {
    "csv": _csv,
    "wandb": _wandb,
    "none": lambda cfg, run_dir, resume_step=None: None,
}


def build_logger(cfg: LoggerConfig, run_dir: str, resume_step: Optional[int] = None) -> LoggerOrLoggers:
    """``resume_step``: the training steps a resumed run's checkpoint holds (None for a fresh run)."""
    return LOGGER_BUILDERS[cfg.kind](cfg, run_dir, resume_step)


class LoggerIdCallback(Callback):
    """Stores the W&B run id in each checkpoint, so that a resumed run logs into the same run."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if isinstance(trainer.logger, WandbLogger) and trainer.logger.version:
            checkpoint[WANDB_ID_KEY] = trainer.logger.version


def finish_logger(loggers: list[Logger]) -> None:
    """End the W&B run (Lightning leaves it open; the next WandbLogger would reuse it)."""
    if any(isinstance(logger, WandbLogger) for logger in loggers) and rank_zero_only.rank == 0:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def read_resume_info(ckpt_path: str) -> tuple[int, Optional[str]]:
    """(training steps done, W&B run id or None) of a checkpoint, without reading its weights (mmap)."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)
        batches = steps_trained_in_checkpoint(checkpoint)
    except (RuntimeError, OSError, KeyError, TypeError, EOFError) as error:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is not a readable checkpoint of a grpo-train run "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "give <run>/checkpoints/last.ckpt, or ckpt_path=last with the run's output_dir"
        ) from None
    damaged = _damaged_record(ckpt_path)
    if damaged is not None:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is damaged: its record {damaged} fails its CRC check (a bit flipped "
            "on disk or in transfer; torch.load would take it silently); resume from another copy, or start again"
        )
    return batches, checkpoint.get(WANDB_ID_KEY)


def _damaged_record(ckpt_path: str) -> Optional[str]:
    """The first record of a checkpoint (a zip file: torch.save's format) whose CRC-32 does not
    match its data, or None. Reads the whole file once (seconds per GB), at resume only."""
    if not zipfile.is_zipfile(ckpt_path):
        return None  # the legacy format carries no checksums
    with zipfile.ZipFile(ckpt_path) as archive:
        try:
            return archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return f"(unreadable: {error})"


def log_run_config(loggers: list[Logger], params: dict) -> None:
    """Send the run's config to every logger; this also starts the W&B run, whose sign-in
    failure is reported as a ConfigError naming the ways out."""
    try:
        for logger in loggers:
            logger.log_hyperparams(params)
    except Exception as error:
        if type(error).__module__.startswith("wandb") and type(error).__name__ in ("UsageError", "AuthenticationError"):
            reason = str(error).rstrip(".")
            raise ConfigError(
                f"logger=wandb could not start a run: {reason}. Run `wandb login` or set "
                "WANDB_API_KEY, or log without an account: logger.offline=true (or "
                "WANDB_MODE=offline), then `wandb sync` later"
            ) from None
        raise
