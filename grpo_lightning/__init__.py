"""grpo-lightning: Group Relative Policy Optimization as a PyTorch Lightning module.

Run the embedded default (a tiny decoder learning 2-digit addition on CPU)::

    grpo-train                      # or: python -m grpo_lightning.run.train
    grpo-train -m algorithm.clip_range=0.1,0.3 seed=0,1      # a Hydra sweep

Use from Python: see :class:`grpo_lightning.module.GRPOModule`.
"""

from grpo_lightning.config import GRPOConfig
from grpo_lightning.module import GRPOModule

__all__ = ["GRPOConfig", "GRPOModule"]
__version__ = "0.1.0"
