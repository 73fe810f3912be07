"""Prompts -> batches of prompts with their columns.

A row is a dict with a prompt column (``data.prompt_key``) and any other columns (e.g.
``answer``); a batch is a dict of lists, one entry per prompt. The rows come from a builder
function named in the config (``data.builder``), which returns (train_rows, val_rows), or from
a file or dataset (``data.path``, see :mod:`grpo_lightning.data.files`). An optional
``prepare(rows, split)`` callable (e.g. :meth:`grpo_lightning.data.formatting.PromptFormatter.prepare`)
formats the prompts and enforces their length limit, so this module needs no tokenizer.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from grpo_lightning.config import ConfigError, DataConfig, import_object
from grpo_lightning.data.files import load_splits
from grpo_lightning.data.sampler import ResumableSampler
from grpo_lightning.distributed import per_process, rank, shards_weights

Row = dict[str, Any]


def collate_rows(rows: list[Row]) -> dict[str, list[Any]]:
    """List of row dicts -> dict of column lists."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def check_rows(rows: list[Row], prompt_key: str, split: str) -> None:
    if not rows:
        raise ConfigError(f"the {split} split is empty; check data.path / data.builder and their options")
    if prompt_key not in rows[0]:
        raise ConfigError(
            f"data.prompt_key={prompt_key!r} is not a column of the {split} rows; columns found: {sorted(rows[0])}"
        )
    empty = [i for i, row in enumerate(rows) if isinstance(row[prompt_key], str) and not row[prompt_key].strip()]
    if empty:
        raise ConfigError(
            f"{len(empty)} of the {len(rows)} {split} rows have an empty prompt (column {prompt_key!r}; the first "
            f"is row {empty[0]}); a policy given no prompt learns nothing from it: remove or fill them"
        )


REFILL_SEED_OFFSET = 1_000_000
"""Dynamic sampling's extra prompts draw epoch e's order from seed + offset + e; the main stream
from seed + e, so the two never share an order."""


class PromptDataModule(L.LightningDataModule):
    """Training and validation prompts for a GRPO run."""

    def __init__(
        self,
        train_rows: list[Row],
        val_rows: list[Row],
        *,
        batch_size: int,
        val_batch_size: int,
        prompt_key: str = "prompt",
        shuffle: bool = True,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        check_rows(train_rows, prompt_key, "train")
        check_rows(val_rows, prompt_key, "validation")
        if len(train_rows) < batch_size:
            raise ConfigError(
                f"data.batch_size={batch_size} is larger than the {len(train_rows)} "
                "training prompts; lower data.batch_size"
            )
        self.train_rows, self.val_rows = train_rows, val_rows
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.prompt_key, self.shuffle, self.num_workers = prompt_key, shuffle, num_workers
        self.seed = seed
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, batches done) from a checkpoint
        self.refill_sampler: Optional[ResumableSampler] = None
        self.refill_batches_done = 0  # of the refill sampler's current epoch
        self._refill_resume_at: Optional[tuple[int, int]] = None

    @classmethod
    def from_config(
        cls, cfg: DataConfig, *, seed: int = 0, prepare: Optional[Callable[[list[Row], str], list[Row]]] = None
    ) -> "PromptDataModule":
        if cfg.path is not None:
            train_rows, val_rows = load_splits(cfg, seed)
        else:
            builder: Callable[..., tuple[list[Row], list[Row]]] = import_object(cfg.builder, "data.builder")
            try:
                train_rows, val_rows = builder(**cfg.builder_kwargs)
            except (TypeError, ValueError) as error:  # typically arguments the builder does not accept
                raise ConfigError(
                    f"data.builder={cfg.builder!r} failed with data.builder_kwargs="
                    f"{dict(cfg.builder_kwargs)}: {type(error).__name__}: {error}"
                ) from None
        if cfg.overfit_rows is not None:
            train_rows = val_rows = train_rows[: cfg.overfit_rows]
        if cfg.max_val_prompts is not None:
            val_rows = val_rows[: cfg.max_val_prompts]
        if prepare is not None:
            check_rows(train_rows, cfg.prompt_key, "train")
            check_rows(val_rows, cfg.prompt_key, "validation")
            train_rows, val_rows = prepare(train_rows, "train"), prepare(val_rows, "validation")
        return cls(
            train_rows,
            val_rows,
            batch_size=cfg.batch_size,
            val_batch_size=cfg.val_batch_size,
            prompt_key=cfg.prompt_key,
            shuffle=cfg.shuffle,
            num_workers=cfg.num_workers,
            seed=seed,
        )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, rows: list[Row], batch_size: int, sampler: ResumableSampler) -> DataLoader:
        # A private generator: creating the loader's iterator must not draw from torch's global
        # one, or a resumed run (which creates one more iterator) would sample differently.
        return DataLoader(
            rows,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=sampler.drop_last,
            collate_fn=collate_rows,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        # drop_last: every step must hold exactly batch_size prompts for the mini-batch split.
        rank, world = self._rank_and_world()
        self.train_sampler = ResumableSampler(
            len(self.train_rows),
            self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
            drop_last=True,
        )
        if self.train_sampler.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={self.batch_size} on {world} processes needs at least "
                f"{self.batch_size * world} training prompts, found {len(self.train_rows)}"
            )
        if self._resume_at is not None:
            self.train_sampler.resume_at(*self._resume_at)
            self._resume_at = None
        return self._loader(self.train_rows, self.batch_size, self.train_sampler)

    def upcoming_train_batch(self, steps_done: int) -> dict[str, list[Any]]:
        """The batch that training step ``steps_done + 1`` of a run begun at epoch 0 gets (one batch
        per step, whole epochs of batches_per_epoch), collated as the loader will give it: what
        asynchronous rollouts generate ahead from. Needs train_dataloader() to have run."""
        per_epoch = self.train_sampler.batches_per_epoch
        indices = self.train_sampler.batch_indices(steps_done // per_epoch, steps_done % per_epoch)
        return collate_rows([self.train_rows[i] for i in indices])

    def refill_dataloader(self) -> DataLoader:
        """More training prompts for dynamic sampling (algorithm.filter_zero_std_groups): the
        training rows in shuffled orders of their own (a seed stream apart from the main one),
        so a refill does not repeat the batches the main stream is about to give, and the main
        sampler and its resume position are untouched. Each pass over it is a new epoch; the
        first continues from a checkpoint's refill position."""
        rank, world = self._rank_and_world()
        if self.refill_sampler is None:
            self.refill_sampler = ResumableSampler(
                len(self.train_rows),
                self.batch_size,
                shuffle=True,
                seed=self.seed + REFILL_SEED_OFFSET,
                rank=rank,
                world_size=world,
                drop_last=True,
            )
            epoch, done = self._refill_resume_at or (0, 0)
            self.refill_sampler.resume_at(epoch, done)
            self._refill_resume_at = None
        else:
            self.refill_sampler.set_epoch(self.refill_sampler.epoch + 1)
            done = 0
        self.refill_batches_done = done
        return self._loader(self.train_rows, self.batch_size, self.refill_sampler)

    def refill_batches(self) -> Iterator[dict[str, list[Any]]]:
        """Endless refill batches (see refill_dataloader), counted so checkpoints hold the position."""
        while True:
            for batch in self.refill_dataloader():
                self.refill_batches_done += 1
                yield batch

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        rows = self.val_rows
        if world > 1 and shards_weights(self.trainer.strategy):
            # Each forward call is a collective there, so every process must run as many
            # validation batches: the prompts past a multiple of the process count are left out.
            rows = rows[: len(rows) - len(rows) % world]
            if len(rows) < len(self.val_rows):
                rank_zero_warn(
                    f"validation uses {len(rows)} of {len(self.val_rows)} prompts: with sharded weights "
                    f"every one of the {world} processes must get as many"
                )
        sampler = ResumableSampler(
            len(rows), self.val_batch_size, shuffle=False, seed=self.seed, rank=rank, world_size=world, drop_last=False
        )
        return self._loader(rows, self.val_batch_size, sampler)

    # The position in the prompt stream, saved in Lightning checkpoints (see resume.py).

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or not hasattr(self, "train_sampler"):
            return {}
        epoch = trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.train_sampler.batches_per_epoch:  # saved on the epoch's last batch
            epoch, done = epoch + 1, 0
        state: dict[str, Any] = {"epoch": epoch, "batches_done": done}
        # Each process draws its own number of refills; only rank 0 writes, so all travel in it.
        # A process that has drawn no refill since resuming keeps the position it resumed at.
        refill = (
            (self.refill_sampler.epoch, self.refill_batches_done) if self.refill_sampler else self._refill_resume_at
        )
        state["refill_per_rank"] = per_process(refill)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_at = (state_dict["epoch"], state_dict["batches_done"])
            per_rank = state_dict.get("refill_per_rank", [])
            # A checkpoint of another process count is refused by RNGStateCallback.
            self._refill_resume_at = per_rank[rank()] if rank() < len(per_rank) else None


def refill_stream(datamodule: Optional[L.LightningDataModule]) -> Optional[Iterator[dict[str, list[Any]]]]:
    """More training prompts for dynamic sampling's extra rounds: the datamodule's own
    ``refill_batches()`` (PromptDataModule: the training rows in an order of their own, its position
    kept in checkpoints), else its ``train_dataloader()`` again and again; None without a datamodule
    (the step's own prompts are then sampled again)."""
    if datamodule is None:
        return None
    if hasattr(datamodule, "refill_batches"):
        return datamodule.refill_batches()
    return (batch for _ in itertools.count() for batch in datamodule.train_dataloader())
