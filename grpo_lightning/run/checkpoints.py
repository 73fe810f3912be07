"""Checkpoints and exact resume: what a Lightning checkpoint alone does not carry.

Lightning's checkpoint holds the policy, optimizer, scheduler and loop counters. For a resumed
run to produce the same metrics as an uninterrupted one, three more things must come back:

* the position in the prompt stream: ``data.sampler.ResumableSampler`` draws each epoch's order from
  ``(seed, epoch)`` alone and can start mid-epoch; the data module stores how many batches of
  the epoch were trained on (Lightning prefetches one batch ahead, so the sampler's own count
  would be off by one), and each process's position in the dynamic-sampling refill stream;
* every random state (python, numpy, torch CPU and CUDA; the generation sampler and the
  mini-batch shuffles draw from torch's), by ``run.resume.RNGStateCallback``, each process's own
  (the checkpoint holds them all; a different process count is refused). It also runs each
  validation on a copy of the random state, so validating more or less often, or a resume
  that skips the validation the checkpoint was written before, cannot change training;
* the checkpoint file must survive a kill -9 mid-write: :class:`AtomicCheckpointIO`;
* the settings that give the counters their meaning (seed, batch and group size, mini-batches,
  passes): ``run.resume.RunSettingsCallback`` refuses a resume that changes them.

Pre-emption (SIGTERM, SIGUSR1 under SLURM, submitit's signal in its jobs) is
``run.preemption.PreemptionCallback``: the training step in flight finishes, ``checkpoints/last.ckpt`` is
written and the run stops cleanly; ``ckpt_path=last`` (see :func:`resolve_ckpt_path`) continues it.

On a GPU a resumed run matches to floating-point tolerance rather than bitwise: cuBLAS/cuDNN
kernels are not deterministic unless ``trainer.deterministic=true`` (and
``CUBLAS_WORKSPACE_CONFIG=:4096:8``), and the sampling kernels' reduction order may differ.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from grpo_lightning.config import ConfigError

LAST_CHECKPOINT = "last.ckpt"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (typically a full disk); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.<pid>.tmp``, flushes it to disk, then renames it over ``path``.

    A process killed mid-write leaves the previous checkpoint intact (rename is atomic on
    POSIX file systems); the stray ``.tmp`` it leaves is removed by the next successful write.
    A write that fails (a full disk) removes its own ``.tmp``, so the space is free again for
    the resume, and says so in one line.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per writer: two runs started into the same directory must not share it.
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        started = time.time()
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except (OSError, RuntimeError) as error:  # torch reports a full disk as a RuntimeError
            temporary.unlink(missing_ok=True)
            free_mib = shutil.disk_usage(path.parent).free / 2**20
            kept = f"{path.name} still holds the previous checkpoint" if path.is_file() else "no checkpoint was kept"
            raise CheckpointWriteError(
                f"writing the checkpoint {path} failed ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); {free_mib:.0f} MiB are "
                f"free there (a full disk?); {kept}. Free some space (checkpoint.save_optimizer_state=false "
                "and checkpoint.save_frozen_weights=false make checkpoints smaller) and continue with ckpt_path=last"
            ) from None
        os.replace(temporary, path)
        for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by writers killed mid-write
            if stale.stat().st_mtime < started:
                stale.unlink(missing_ok=True)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def resolve_ckpt_path(ckpt_path: Optional[str], run_dir: str | Path) -> Optional[str]:
    """``None`` -> start fresh; ``last`` -> ``<run_dir>/checkpoints/last.ckpt`` if it exists (a
    fresh start otherwise, so one command serves the first launch and every requeue); a path ->
    that file, which must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = checkpoint_dir(run_dir) / LAST_CHECKPOINT
        return str(last) if last.is_file() else None
    if not Path(ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is not a file; give a checkpoint written by a run "
            "(<run>/checkpoints/last.ckpt) or ckpt_path=last with the run's output_dir"
        )
    return ckpt_path


def validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether Lightning validates after the training batch in progress, on the batch-based
    schedule that build_trainer sets (val_check_interval in batches). A validation without
    batches (an empty shard) is skipped without its end hooks, so it does not count."""
    return (
        trainer.enable_validation
        and sum(trainer.num_val_batches) > 0
        and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % trainer.val_check_batch == 0
    )


class AfterItsValidation(Callback):
    """A callback acting on a training step's outcome: :meth:`after_step` runs at once, or, when
    Lightning validates after the step, once that validation has ended (so it sees its results)."""

    _after_validation = False

    def after_step(self, trainer: L.Trainer) -> None:
        raise NotImplementedError

    def after_step_or_its_validation(self, trainer: L.Trainer) -> None:
        """Call from ``on_train_batch_end`` for a step that is due."""
        if validates_after_this_batch(trainer):
            self._after_validation = True
        else:
            self.after_step(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_validation and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._after_validation = False
            self.after_step(trainer)


class LastCheckpoint(AfterItsValidation):
    """Writes ``last.ckpt`` every ``every_n_optimizer_steps`` optimizer steps and at the last one.

    A step that is validated is saved after its validation (Lightning's ModelCheckpoint saves
    before it), so that a resume does not skip a validation that an interrupted run never
    finished: Lightning treats a checkpoint written before a step's validation as validated.
    The price: a run killed during such a validation resumes from the checkpoint before.
    ``save`` writes at most once per optimizer step (PreemptionCallback calls it too).
    """

    def __init__(self, dirpath: str | Path, every_n_optimizer_steps: int):
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_optimizer_steps = every_n_optimizer_steps
        self._saved_at: Optional[int] = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= trainer.max_steps or trainer.global_step % self.every_n_optimizer_steps == 0:
            self.after_step_or_its_validation(trainer)

    def after_step(self, trainer: L.Trainer) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        # A skipped update does not advance global_step: the state is the one already saved.
        if trainer.global_step != self._saved_at:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state, for resuming
            self._saved_at = trainer.global_step


FINAL_VALIDATION = "final_validation.json"


def record_final_validation(directory: str | Path, global_step: int, metrics: dict[str, float]) -> None:
    """Keep a finished run's last validation beside its checkpoints: continuing the run with
    ``ckpt_path=last`` trains nothing, and must neither validate again (a second row) nor lose
    the results (a sweeper's objective)."""
    path = Path(directory) / FINAL_VALIDATION
    path.parent.mkdir(parents=True, exist_ok=True)  # a finished run's checkpoint given to a new output_dir
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"global_step": global_step, "metrics": metrics}))
    os.replace(temporary, path)


def recorded_final_validation(directory: str | Path, global_step: int) -> Optional[dict[str, float]]:
    """The metrics record_final_validation kept for ``global_step``, if any."""
    path = Path(directory) / FINAL_VALIDATION
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record["metrics"] if record["global_step"] == global_step else None
