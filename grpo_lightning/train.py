"""Moved to :mod:`grpo_lightning.run.train`. ``python -m grpo_lightning.train`` and this import path
keep working: importing it gives that module."""

import sys

from grpo_lightning.run import train

if __name__ == "__main__":
    train.main()
else:
    sys.modules[__name__] = train
