"""Prompts: files and datasets (files.py), chat formatting (formatting.py), the datamodule
(datamodule.py) and its resumable sampler (sampler.py), rollouts produced elsewhere
(external.py), built-in tasks (tasks/)."""

from grpo_lightning.data.datamodule import PromptDataModule

__all__ = ["PromptDataModule"]
