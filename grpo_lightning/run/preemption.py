"""Pre-emption: a signal (SIGTERM, SIGUSR1, submitit's SIGUSR2, Ctrl-C) saves last.ckpt at the end
of the step (or of its validation) and stops; SLURM jobs are requeued. A second Ctrl-C stops at
once, without a checkpoint (the previous one, if any, stays)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from grpo_lightning.compat import skip_next_validation
from grpo_lightning.run.checkpoints import LastCheckpoint, validates_after_this_batch


def preemption_signals() -> list[signal.Signals]:
    """SIGTERM and SIGINT (Ctrl-C) always; SIGUSR1 too under SLURM (``#SBATCH --signal=USR1@90``
    sends it ahead of the time limit); in a job submitted by submitit (hydra/launcher=slurm), its
    pre-emption signal as well (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    signals = [signal.SIGTERM, signal.SIGINT]
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


PREEMPTED = threading.Event()
"""Set once a run of this process has stopped for a pre-emption signal: a sweep must not start
its next job (grpo_lightning.run.train.main), the machine is going away."""
INTERRUPTED = threading.Event()
"""Set with PREEMPTED when the signal was Ctrl-C (SIGINT): the command then exits with 130, as an
interrupted command does, not 0 as a pre-empted job that its scheduler requeues."""


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
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once, as it would anywhere else
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
            print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again: at once)", flush=True)

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

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # A step with a validation stops after it (below), so that the checkpoint records it.
        if self._signalled(trainer) and not validates_after_this_batch(trainer):
            self._stop(trainer)
            # should_stop alone would make Lightning validate off schedule; the machine is going away.
            skip_next_validation(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self._signalled(trainer):
            self._stop(trainer)

    def _signalled(self, trainer: L.Trainer) -> bool:
        """Whether any process got a signal (a collective: every process calls it alike)."""
        return self.preempted_at is None and trainer.strategy.reduce_boolean_decision(
            self.received is not None, all=False
        )

    def _stop(self, trainer: L.Trainer) -> None:
        self.checkpoint.save(trainer)
        self.preempted_at = trainer.global_step
        PREEMPTED.set()
        if self.received == signal.SIGINT:
            INTERRUPTED.set()
        trainer.should_stop = True
        if self.received is not None and self.received == submitit_signal():
            submitits_handler = self._previous.get(self.received)
            self._restore_handlers()
            if callable(submitits_handler):
                print(
                    f"pre-empted: {self.checkpoint.path} written; submitit requeues the job "
                    "(give the sweep ckpt_path=last so that it continues)",
                    file=sys.stderr,
                    flush=True,
                )
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
        print(
            f"warning: could not requeue SLURM job {job} (scontrol requeue: {code}); resubmit it with ckpt_path=last",
            file=sys.stderr,
            flush=True,
        )
