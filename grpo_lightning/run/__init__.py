"""Running GRPO: the Hydra entry point (train.py), checkpoints and exact resume (checkpoints.py,
resume.py), pre-emption (preemption.py), run directories, loggers, progress, plots and W&B
tables. Only the entry point imports this package (tests/test_layering.py)."""
