"""grpo-lightning: Group Relative Policy Optimization as a PyTorch Lightning module.

Run the embedded default (a tiny decoder learning 2-digit addition on CPU)::

    grpo-train                      # or: python -m grpo_lightning.train
    grpo-train -m algorithm.clip_range=0.1,0.3 seed=0,1      # a Hydra sweep

Use from Python: see :class:`grpo_lightning.module.GRPOModule`. The layers: README, "Project layout".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpo_lightning.config import GRPOConfig
    from grpo_lightning.module import GRPOModule

__all__ = ["GRPOConfig", "GRPOModule"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import grpo_lightning.algo` (pure torch) does not load
    # Lightning and transformers with the module.
    if name == "GRPOConfig":
        from grpo_lightning.config import GRPOConfig

        return GRPOConfig
    if name == "GRPOModule":
        from grpo_lightning.module import GRPOModule

        return GRPOModule
    raise AttributeError(f"module 'grpo_lightning' has no attribute {name!r}")
