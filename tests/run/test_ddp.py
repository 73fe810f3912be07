"""Two processes (DDP over gloo on CPU; DDP/FSDP over NCCL with 2 GPUs) train a few steps and end with the
same parameters.

The learning signal does not depend on what the random policy samples: tests.signals.alternating gives
every group spread (non-zero advantages) and the entropy bonus moves the parameters even where a
group's completions all came out the same."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from tests.processes import child_env

SCRIPT = """
import sys
import torch
from grpo_lightning.module import GRPOModule
from grpo_lightning.run.train import load_config, train

out = sys.argv[1]

def dump(self):  # every process writes its own parameters
    params = {k: v.detach().clone() for k, v in self.policy.model.state_dict().items()}
    torch.save({"params": params, "world_size": self.trainer.world_size}, f"{out}/rank{self.global_rank}.pt")

GRPOModule.on_train_end = dump
train(load_config(sys.argv[2:]))
"""


NEEDS_TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer, extra",
    [
        ("ddp_cpu", []),
        ("ddp_cpu", ["generation.max_staleness=1"]),  # each process's sampler thread, rollouts in the checkpoint
        pytest.param("ddp", [], marks=NEEDS_TWO_GPUS),
        pytest.param("fsdp", [], marks=NEEDS_TWO_GPUS),
    ],
)
def test_two_processes_agree_on_parameters(trainer, extra, random_arith_dir, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    devices = ["trainer.devices=2"] if trainer != "ddp_cpu" else []
    overrides = [
        f"trainer={trainer}",
        *devices,
        f"model.name_or_path={random_arith_dir}",
        f"output_dir={tmp_path}/run",
        "trainer.max_steps=2",
        "data.batch_size=2",
        "algorithm.group_size=4",
        "optim.lr=1e-2",
        "algorithm.mini_batch_size=4",
        "trainer.enable_progress_bar=false",
        "data.val_batch_size=8",
        "trainer.limit_val_batches=1",
        "trainer.val_every_n_steps=1",
        "validate_before_training=false",
        "algorithm.beta=0.04",
        "algorithm.entropy_coef=0.01",
        "reward.functions.correct.fn=tests.signals.alternating",
        *extra,
    ]
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *overrides],
        cwd=tmp_path,
        env=child_env(one_thread=True),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    from safetensors.torch import load_file

    initial = load_file(random_arith_dir / "model.safetensors")
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    assert all(torch.equal(p0[k], p1[k]) for k in p0), "the ranks' parameters diverged"
    assert any(not torch.equal(p0[k], initial[k]) for k in initial), "no parameter changed"
    with open(tmp_path / "run" / "metrics.csv") as handle:
        steps = [row for row in csv.DictReader(handle) if row.get("reward/frac_zero_std")]
    assert [float(row["reward/frac_zero_std"]) for row in steps] == [0.0, 0.0]  # every group had a signal
    if extra:
        assert [float(row["rollout/staleness"]) for row in steps] == [0.0, 1.0]
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()  # exported once, by rank 0


def test_a_stray_local_rank_is_refused_rather_than_waited_on(random_arith_dir, tmp_path):
    """LOCAL_RANK left in the shell made a ddp_cpu run wait for ever for a second process."""
    env = dict(os.environ, LOCAL_RANK="0", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_lightning.run.train",
            f"model.name_or_path={random_arith_dir}",
            "trainer=ddp_cpu",
            "trainer.max_steps=1",
            f"output_dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "LOCAL_RANK=0 is set in the environment" in result.stderr and "torchrun --nproc-per-node 2" in result.stderr
