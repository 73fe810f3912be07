"""Two identical runs are identical, with torch's default number of threads (not only with one).

They run at the same time, so the threads of each are scheduled differently from run to run:
a kernel that sums in the order its threads finish (index_put_ with accumulate=True on a CPU,
which the tied-embedding gradient used) shows up within a few steps. The default task's policy
ties its embedding to the output head; the second case unties them, so the input embedding's own
backward (a scatter-add over token ids) and the output head's are exercised apart."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(handle)]


def _untied_model(directory: Path) -> list[str]:
    """The default task's policy with its own output head, as a model directory."""
    import torch
    from transformers import LlamaForCausalLM

    from grpo_lightning.data.tasks.arithmetic import build_tokenizer, model_config

    config = model_config()
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return [f"model.name_or_path={directory}", "data=arithmetic"]


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["tied", "untied"])
def test_two_identical_runs_with_the_default_threads_are_bitwise_equal(tmp_path, embedding):
    model = _untied_model(tmp_path / "untied_model") if embedding == "untied" else []
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grpo_lightning.run.train",
                f"output_dir={tmp_path / name}",
                "trainer.max_steps=24",
                "trainer.enable_progress_bar=false",
                "checkpoint.enabled=false",
                *model,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    first, second = _metrics(tmp_path / "first"), _metrics(tmp_path / "second")
    assert len(first) == len(second) >= 24
    for row, other in zip(first, second):
        assert row == other, f"step {row['step']} differs"
    weights = [load_file(tmp_path / name / "policy" / "model.safetensors") for name in ("first", "second")]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
