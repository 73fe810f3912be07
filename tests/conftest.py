"""Shared fixtures: a tiny random policy with the arithmetic tokenizer, and composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.signals import RANDOM_MODEL_SEED

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test gets back the environment it started with. Code under test may set variables
    for itself (the vLLM sampler sets RANK, LOCAL_RANK, WORLD_SIZE for its engine); left behind,
    they reach the next test's subprocesses, and a two-process run that inherits LOCAL_RANK
    believes it was launched by someone else and waits for a second process that never comes."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def random_arith_dir(tmp_path_factory) -> Path:
    """A randomly initialised arithmetic decoder in Hugging Face format (saved once)."""
    from transformers import LlamaForCausalLM

    from grpo_lightning.data.tasks.arithmetic import build_tokenizer, model_config

    torch.manual_seed(RANDOM_MODEL_SEED)
    directory = tmp_path_factory.mktemp("random_arith")
    LlamaForCausalLM(model_config()).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def arith_policy(random_arith_dir):
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    return CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir)))


class Votes:
    """A stand-in for strategy.reduce_boolean_decision(all=True): every decision asked is recorded;
    a True one is answered with the next of ``others`` (True once they run out), what the other
    processes say. A False one is False whatever they say, and uses none of ``others``."""

    def __init__(self, others: list[bool]):
        self.others = list(others)
        self.asked: list[bool] = []

    def __call__(self, decision: bool) -> bool:
        self.asked.append(decision)
        return decision and (self.others.pop(0) if self.others else True)


@pytest.fixture
def votes():
    """votes(others) -> a lockstep vote whose other processes answer ``others`` in turn."""
    return Votes


@pytest.fixture
def compose_config(tmp_path):
    """compose_config(*overrides) -> the real Hydra config, written to tmp_path, shrunk for CPU tests."""
    from grpo_lightning.run.train import load_config

    def compose_with(*overrides: str):
        small = [
            f"output_dir={tmp_path}",
            "trainer.max_steps=2",
            "trainer.val_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "data.batch_size=4",
            "data.val_batch_size=16",
            "trainer.limit_val_batches=1",
        ]
        return load_config(small + list(overrides))

    return compose_with
