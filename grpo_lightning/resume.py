"""Exact resume and pre-emption: what a Lightning checkpoint alone does not carry.

Lightning's checkpoint holds the policy, optimizer, scheduler and loop counters. For a resumed
run to produce the same metrics as an uninterrupted one, three more things must come back:

* the position in the prompt stream: :class:`ResumableSampler` draws each epoch's order from
  ``(seed, epoch)`` alone and can start mid-epoch; the data module stores how many batches of
  the epoch were trained on (Lightning prefetches one batch ahead, so the sampler's own count
  would be off by one), and each process's position in the dynamic-sampling refill stream;
* every random state (python, numpy, torch CPU and CUDA; the generation sampler and the
  mini-batch shuffles draw from torch's), by :class:`RNGStateCallback`, each process's own
  (the checkpoint holds them all; a different process count is refused). It also runs each
  validation on a copy of the random state, so validating more or less often, or a resume
  that skips the validation the checkpoint was written before, cannot change training;
* the checkpoint file must survive a kill -9 mid-write: :class:`AtomicCheckpointIO`;
* the settings that give the counters their meaning (seed, batch and group size, mini-batches,
  passes): :class:`RunSettingsCallback` refuses a resume that changes them.

Pre-emption (SIGTERM, SIGUSR1 under SLURM, submitit's signal in its jobs) is
:class:`PreemptionCallback`: the training step in flight finishes, ``checkpoints/last.ckpt`` is
written and the run stops cleanly; ``ckpt_path=last`` (see :func:`resolve_ckpt_path`) continues it.

On a GPU a resumed run matches to floating-point tolerance rather than bitwise: cuBLAS/cuDNN
kernels are not deterministic unless ``trainer.deterministic=true`` (and
``CUBLAS_WORKSPACE_CONFIG=:4096:8``), and the sampling kernels' reduction order may differ.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Sampler

from grpo_lightning.config import ConfigError
from grpo_lightning.distributed import is_distributed, per_process, rank, world_size

LAST_CHECKPOINT = "last.ckpt"


class ResumableSampler(Sampler[int]):
    """Row indices for one process: a seeded per-epoch order, sharded by rank, resumable.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed + e``
    (or the natural order without shuffling), so it is known without replaying earlier epochs.
    With ``world_size`` processes, process ``rank`` takes every ``world_size``-th row of it; with
    ``drop_last`` the order is first cut to a whole number of batches on every process, so all
    processes run the same number of steps (DDP needs that).
    """

    def __init__(self, num_rows: int, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True):
        self.num_rows, self.batch_size, self.shuffle, self.seed = num_rows, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0  # batches of the current epoch already trained on (resume)

    def __len__(self) -> int:
        if self.drop_last:
            return (self.num_rows // (self.batch_size * self.world_size)) * self.batch_size
        return len(range(self.rank, self.num_rows, self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        return len(self) // self.batch_size if self.drop_last else -(-len(self) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.start_batch = epoch, 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.start_batch = epoch, batches_done

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_rows, generator=generator)
        else:
            order = torch.arange(self.num_rows)
        if self.drop_last:
            order = order[:len(self) * self.world_size]
        mine = order[self.rank::self.world_size]
        start, self.start_batch = self.start_batch * self.batch_size, 0  # the skip applies once
        return iter(mine[start:].tolist())


# -- random states ---------------------------------------------------------------------------

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
            raise ConfigError(f"this checkpoint was written by one process; resuming it on {world} would give "
                              "every process the same random state. Resume with the process count it was saved with")
        if per_rank is not None and len(per_rank) != world:
            raise ConfigError(f"this checkpoint was written by {len(per_rank)} processes and is resumed on {world}; "
                              "exact resume needs the same number (trainer.devices x trainer.num_nodes)")
        self._pending = per_rank[rank()] if per_rank is not None else state_dict["rng"]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before_validation = capture_rng_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._before_validation is not None:
            restore_rng_state(self._before_validation)
            self._before_validation = None


RESUME_FIXED_SETTINGS = ("seed", "data.batch_size", "algorithm.group_size", "algorithm.mini_batch_size",
                         "algorithm.num_iterations")
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
        changed = [f"{key}={state_dict[key]} (now {value})" for key, value in self.settings.items()
                   if key in state_dict and state_dict[key] != value]
        if changed:
            raise ConfigError(f"ckpt_path: the checkpoint was written with {', '.join(changed)}; resume with the "
                              "run's own values (trainer.max_steps, logging and checkpoint cadence may change)")


# -- checkpoint files ------------------------------------------------------------------------

class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.<pid>.tmp``, flushes it to disk, then renames it over ``path``.

    A process killed mid-write leaves the previous checkpoint intact (rename is atomic on
    POSIX file systems); only a stray ``.tmp`` file remains.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per writer: two runs started into the same directory must not share it.
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


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
        raise ConfigError(f"ckpt_path={ckpt_path!r} is not a file; give a checkpoint written by a run "
                          "(<run>/checkpoints/last.ckpt) or ckpt_path=last with the run's output_dir")
    return ckpt_path


# -- pre-emption ------------------------------------------------------------------------------

def preemption_signals() -> list[signal.Signals]:
    """SIGTERM always; SIGUSR1 too under SLURM (``#SBATCH --signal=USR1@90`` sends it ahead of
    the time limit); in a job submitted by submitit (hydra/launcher=slurm), its pre-emption
    signal as well (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    signals = [signal.SIGTERM]
    if "SLURM_JOB_ID" in os.environ and hasattr(signal, "SIGUSR1"):
        signals.append(signal.SIGUSR1)
    submitit = submitit_signal()
    if submitit is not None and submitit not in signals:
        signals.append(submitit)
    return signals


def submitit_signal() -> Optional[signal.Signals]:
    """The signal submitit sends a job of its ahead of the time limit or on pre-emption, None
    outside such a job."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether Lightning validates after the training batch in progress, on the batch-based
    schedule that build_trainer sets (val_check_interval in batches). A validation without
    batches (an empty shard) is skipped without its end hooks, so it does not count."""
    return (trainer.enable_validation and sum(trainer.num_val_batches) > 0
            and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % trainer.val_check_batch == 0)


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

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
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


PREEMPTED = threading.Event()
"""Set once a run of this process has stopped for a pre-emption signal: a sweep must not start
its next job (grpo_lightning.train.main), the machine is going away."""


class PreemptionCallback(Callback):
    """On a pre-emption signal: finish the current step, write last.ckpt, stop the run.

    The handlers are installed when fitting starts, over Lightning's own (which would only
    stop at the end of an epoch, without a checkpoint), and the previous ones come back at the
    end. Every process must agree to stop at the same step, so the flag is reduced across
    processes after each step. Under submitit, its own handler (which requeues the job and
    exits at once) runs after the checkpoint is written instead of in the middle of a step.
    """

    def __init__(self, checkpoint: LastCheckpoint):
        self.checkpoint = checkpoint
        self.received: Optional[int] = None
        self.preempted_at: Optional[int] = None  # Lightning global_step of the pre-emption save
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in preemption_signals():
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # A step with a validation stops after it (below), so that the checkpoint records it.
        if self._signalled(trainer) and not validates_after_this_batch(trainer):
            self._stop(trainer)
            # should_stop alone would make Lightning validate off schedule; the machine is going away.
            epoch_loop = trainer.fit_loop.epoch_loop
            if hasattr(epoch_loop, "_skip_next_val"):
                epoch_loop._skip_next_val = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self._signalled(trainer):
            self._stop(trainer)

    def _signalled(self, trainer: L.Trainer) -> bool:
        """Whether any process got a signal (a collective: every process calls it alike)."""
        return self.preempted_at is None and trainer.strategy.reduce_boolean_decision(self.received is not None,
                                                                                      all=False)

    def _stop(self, trainer: L.Trainer) -> None:
        self.checkpoint.save(trainer)
        self.preempted_at = trainer.global_step
        PREEMPTED.set()
        trainer.should_stop = True
        if self.received is not None and self.received == submitit_signal():
            submitits_handler = self._previous.get(self.received)
            self._restore_handlers()
            if callable(submitits_handler):
                print(f"pre-empted: {self.checkpoint.path} written; submitit requeues the job "
                      "(give the sweep ckpt_path=last so that it continues)", file=sys.stderr, flush=True)
                submitits_handler(self.received, None)
        elif self.received == getattr(signal, "SIGUSR1", None) and trainer.is_global_zero:
            _requeue_slurm_job()


def _requeue_slurm_job() -> None:
    """SLURM sends SIGUSR1 ahead of the time limit (--signal=USR1@N): put the job back in the
    queue so that it continues from last.ckpt (with ckpt_path=last)."""
    job = os.environ["SLURM_JOB_ID"]
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        code = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        code = None
    if code != 0:
        print(f"warning: could not requeue SLURM job {job} (scontrol requeue: {code}); resubmit it with "
              "ckpt_path=last", file=sys.stderr, flush=True)
