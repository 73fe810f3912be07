"""Prompts -> batches of prompts with their columns.

A row is a dict with a prompt column (``data.prompt_key``) and any other columns (e.g.
``answer``); a batch is a dict of lists, one entry per prompt. The rows come from a builder
function named in the config (``data.builder``), which returns (train_rows, val_rows), or from
a file or dataset (``data.path``, see :mod:`grpo_lightning.prompt_files`). An optional
``prepare(rows, split)`` callable (e.g. :meth:`grpo_lightning.prompts.PromptFormatter.prepare`)
formats the prompts and enforces their length limit, so this module needs no tokenizer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import lightning as L
from torch.utils.data import DataLoader

from grpo_lightning.config import ConfigError, DataConfig, import_object
from grpo_lightning.prompt_files import load_splits

Row = dict[str, Any]


def collate_rows(rows: list[Row]) -> dict[str, list[Any]]:
    """List of row dicts -> dict of column lists."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def check_rows(rows: list[Row], prompt_key: str, split: str) -> None:
    if not rows:
        raise ConfigError(f"the {split} split is empty; check data.path / data.builder and their options")
    if prompt_key not in rows[0]:
        raise ConfigError(f"data.prompt_key={prompt_key!r} is not a column of the {split} rows; "
                          f"columns found: {sorted(rows[0])}")


class PromptDataModule(L.LightningDataModule):
    """Training and validation prompts for a GRPO run."""

    def __init__(self, train_rows: list[Row], val_rows: list[Row], *, batch_size: int,
                 val_batch_size: int, prompt_key: str = "prompt", shuffle: bool = True,
                 num_workers: int = 0):
        super().__init__()
        check_rows(train_rows, prompt_key, "train")
        check_rows(val_rows, prompt_key, "validation")
        if len(train_rows) < batch_size:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the {len(train_rows)} "
                              "training prompts; lower data.batch_size")
        self.train_rows, self.val_rows = train_rows, val_rows
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.prompt_key, self.shuffle, self.num_workers = prompt_key, shuffle, num_workers

    @classmethod
    def from_config(cls, cfg: DataConfig, *, seed: int = 0,
                    prepare: Optional[Callable[[list[Row], str], list[Row]]] = None) -> "PromptDataModule":
        if cfg.path is not None:
            train_rows, val_rows = load_splits(cfg, seed)
        else:
            builder: Callable[..., tuple[list[Row], list[Row]]] = import_object(cfg.builder, "data.builder")
            train_rows, val_rows = builder(**cfg.builder_kwargs)
        if cfg.overfit_rows is not None:
            train_rows = val_rows = train_rows[:cfg.overfit_rows]
        if cfg.max_val_prompts is not None:
            val_rows = val_rows[:cfg.max_val_prompts]
        if prepare is not None:
            check_rows(train_rows, cfg.prompt_key, "train")
            check_rows(val_rows, cfg.prompt_key, "validation")
            train_rows, val_rows = prepare(train_rows, "train"), prepare(val_rows, "validation")
        return cls(train_rows, val_rows, batch_size=cfg.batch_size, val_batch_size=cfg.val_batch_size,
                   prompt_key=cfg.prompt_key, shuffle=cfg.shuffle, num_workers=cfg.num_workers)

    def train_dataloader(self) -> DataLoader:
        # drop_last: every step must hold exactly batch_size prompts for the mini-batch split.
        return DataLoader(self.train_rows, batch_size=self.batch_size, shuffle=self.shuffle,
                          drop_last=True, collate_fn=collate_rows, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_rows, batch_size=self.val_batch_size, shuffle=False,
                          collate_fn=collate_rows, num_workers=self.num_workers)
