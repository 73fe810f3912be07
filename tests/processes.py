"""The environment of a training command that a test starts in a child process."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def child_env(*, one_thread: bool = False) -> dict[str, str]:
    """This process's environment, offline (W&B, the hub), with the repository importable (``tests.*``
    functions named in configs) and, for several processes on a few cores, one torch thread each."""
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    return env
