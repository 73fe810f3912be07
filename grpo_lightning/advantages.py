"""Moved to :mod:`grpo_lightning.algo.advantages`. This import path keeps working: it is that module."""

import sys

from grpo_lightning.algo import advantages

sys.modules[__name__] = advantages
