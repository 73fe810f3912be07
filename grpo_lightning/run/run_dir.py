"""Who may write into a run directory.

Three rules keep one run's results from being overwritten or interleaved with another's:

* a fresh run (no ``ckpt_path``) into a directory holding a run's ``metrics.csv`` or
  ``last.ckpt`` is refused (:func:`refuse_used_output_dir`);
* while a run is live its directory holds a lock naming its host and process, and a second run
  into it is refused (:func:`output_dir_lock`): two runs started in the same second share
  Hydra's default directory (``outputs/<date>/<time>``, to the second) and would otherwise both
  pass the first rule before either had written anything. Taking over a lock whose process is
  gone is not atomic: two runs doing so at the same moment can both proceed;
* in a ``-m`` sweep each job marks its directory as its own (:func:`claim_output_dir`), which
  also covers jobs given ``ckpt_path=last``, where the first rule does not apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from lightning.pytorch.utilities import rank_zero_only

from grpo_lightning.config import ConfigError
from grpo_lightning.run.checkpoints import LAST_CHECKPOINT

RUN_LOCK = ".grpo-run.lock"
SWEEP_JOB_MARKER = ".grpo-sweep-job.json"
UNWRITTEN_LOCK_GRACE_S = 60  # a lock created but not yet written is its creator's for this long


def refuse_used_output_dir(run_dir: Path) -> None:
    """A fresh run must not write into another run's results (its metrics.csv would be replaced,
    its checkpoint overwritten step by step, or two runs would interleave)."""
    used = [name for name in ("metrics.csv", f"checkpoints/{LAST_CHECKPOINT}") if (run_dir / name).is_file()]
    if used:
        raise ConfigError(
            f"output_dir={run_dir} already holds a run ({', '.join(used)}); continue it with "
            "ckpt_path=last, or give a new output_dir (or delete that one)"
        )


def refuse_finished_run_without_checkpoint(run_dir: Path) -> bool:
    """For ``ckpt_path=last`` where ``run_dir`` has no checkpoint: whether an earlier run there
    stopped before its first one (True: it is started again from step 0, and says so). A run that
    finished without checkpoints (its ``policy/`` exported) is refused rather than replaced."""
    if not (run_dir / "metrics.csv").is_file():
        return False
    if (run_dir / "policy").is_dir():
        raise ConfigError(
            f"ckpt_path=last: output_dir={run_dir} holds a finished run without checkpoints "
            "(checkpoint.enabled=false), which cannot be continued; give a new output_dir"
        )
    print(
        f"ckpt_path=last: the run in {run_dir} stopped before its first checkpoint; "
        "starting it again from step 0 (its metrics.csv is replaced)",
        flush=True,
    )
    return True


@contextlib.contextmanager
def output_dir_lock(run_dir: Path, resuming: bool) -> Iterator[None]:
    """Hold ``run_dir/.grpo-run.lock`` for the duration of a run (rank 0 only; removed at the end,
    also on errors). A lock left by a process that died on this host is taken over. One from
    another host cannot be checked: a fresh run stops, naming the file to delete; a resumed run
    (``resuming``: a requeued job, typically on another node after its first was killed outright)
    takes it over. Processes started together by torchrun or srun take no lock: only rank 0 could
    hold it, and its refusal would leave the others waiting for it at the first collective
    (Lightning's own DDP launcher starts the others after this point, from rank 0)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir={run_dir} is a file, not a directory; give a directory")
    if rank_zero_only.rank != 0 or _started_with_others():
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output_dir={run_dir} cannot be created ({error.strerror}); give a writable place") from None
    lock = run_dir / RUN_LOCK
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _live_holder(lock, trust_other_hosts=not resuming)
            if holder is not None:
                raise ConfigError(
                    f"output_dir={run_dir} is in use by another run ({holder}); two runs started in "
                    "the same second share Hydra's default directory: give each its own "
                    f"output_dir (or use -m for several runs). If no run is live there, delete {lock}"
                ) from None
            lock.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{socket.gethostname()} {os.getpid()}")
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _started_with_others() -> bool:
    """Whether this process was started as one of several (torchrun, srun with several tasks)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _live_holder(lock: Path, trust_other_hosts: bool) -> Optional[str]:
    """Who holds ``lock``, if it may still be live; None if its process is known to be gone (or,
    without ``trust_other_hosts``, runs on another host)."""
    try:
        text = lock.read_text().split()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    if len(text) != 2 or not text[1].isdigit():
        return "a run that is just starting" if age < UNWRITTEN_LOCK_GRACE_S else None
    host, pid = text[0], int(text[1])
    if host != socket.gethostname():
        return f"process {pid} on {host}" if trust_other_hosts else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return f"process {pid}"


def claim_output_dir(output_dir: str, sweep_dir: str, job_num: int) -> None:
    """In a sweep, mark ``output_dir`` as this job's; refuse one that another job of the same
    sweep already wrote to. Without ckpt_path, refuse_used_output_dir would stop the second job
    too; with ckpt_path=last it would continue the first job's run as its own."""
    marker = Path(output_dir) / SWEEP_JOB_MARKER
    if marker.is_file():
        claimed = json.loads(marker.read_text())
        if claimed["sweep_dir"] == sweep_dir and claimed["job_num"] != job_num:
            raise ConfigError(
                f"output_dir={output_dir} is shared by jobs #{claimed['job_num']} and #{job_num} of "
                "this sweep; leave output_dir to Hydra (hydra.sweep.dir/hydra.sweep.subdir) or make it "
                "differ per job, e.g. output_dir=/runs/x/${hydra:job.num}"
            )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"sweep_dir": sweep_dir, "job_num": job_num}))
