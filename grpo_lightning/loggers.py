"""Experiment loggers by name (``logger.kind``): csv, wandb, none."""

from __future__ import annotations

from typing import Callable, Optional

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from grpo_lightning.config import LoggerConfig


def _csv(cfg: LoggerConfig, run_dir: str) -> Logger:
    # name="" and version="" put metrics.csv directly in the run directory.
    return CSVLogger(save_dir=run_dir, name="", version="")


def _wandb(cfg: LoggerConfig, run_dir: str) -> Logger:
    return WandbLogger(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags),
                       name=cfg.run_name, id=cfg.id, save_dir=run_dir, offline=cfg.offline,
                       resume="allow" if cfg.id else None)


LOGGER_BUILDERS: dict[str, Callable[[LoggerConfig, str], Optional[Logger]]] = {
    "csv": _csv,
    "wandb": _wandb,
    "none": lambda cfg, run_dir: None,
}


def build_logger(cfg: LoggerConfig, run_dir: str) -> Optional[Logger]:
    return LOGGER_BUILDERS[cfg.kind](cfg, run_dir)
