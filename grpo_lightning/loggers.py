"""Experiment loggers by name (``logger.kind``): csv, wandb, none.

``wandb`` also keeps ``metrics.csv`` in the run directory, so that ``reward_curve.png`` and
``grpo-plot`` work on W&B runs too (and offline runs have a plain-text record).
"""

from __future__ import annotations

from typing import Callable, Union

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from grpo_lightning.config import LoggerConfig


def _csv(cfg: LoggerConfig, run_dir: str) -> Logger:
    # name="" and version="" put metrics.csv directly in the run directory.
    return CSVLogger(save_dir=run_dir, name="", version="")


def _wandb(cfg: LoggerConfig, run_dir: str) -> list[Logger]:
    wandb = WandbLogger(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags),
                        name=cfg.run_name, id=cfg.id, save_dir=run_dir, offline=cfg.offline,
                        resume="allow" if cfg.id else None)
    return [wandb, _csv(cfg, run_dir)]


LoggerOrLoggers = Union[Logger, list[Logger], None]

LOGGER_BUILDERS: dict[str, Callable[[LoggerConfig, str], LoggerOrLoggers]] = {
    "csv": _csv,
    "wandb": _wandb,
    "none": lambda cfg, run_dir: None,
}


def build_logger(cfg: LoggerConfig, run_dir: str) -> LoggerOrLoggers:
    return LOGGER_BUILDERS[cfg.kind](cfg, run_dir)
