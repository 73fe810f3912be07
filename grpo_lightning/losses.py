"""Moved to :mod:`grpo_lightning.algo.losses`. This import path keeps working: it is that module."""

import sys

from grpo_lightning.algo import losses

sys.modules[__name__] = losses
