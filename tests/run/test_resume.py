"""Exact resume, pre-emption and atomic checkpoints (grpo_lightning/run/checkpoints.py)."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo_lightning.data.sampler import ResumableSampler
from grpo_lightning.run.checkpoints import AtomicCheckpointIO
from grpo_lightning.run.resume import capture_rng_state, restore_rng_state
from grpo_lightning.run.train import train
from tests.processes import child_env

# A reward with spread inside groups (so advantages and updates are non-zero even for a random
# policy): the share of the digit 1 in the completion.
REWARDS_SOURCE = """
def ones(prompts, completions, **columns):
    return [c.count("1") / max(len(c), 1) for c in completions]

def ones_then_hang_in_step_4(prompts, completions, trainer_state, **columns):
    # A step longer than any grace period, while the file "hang" exists: the run is killed inside it.
    import os, time
    while trainer_state.global_step >= 3 and os.path.exists("hang"):
        time.sleep(0.1)
    return ones(prompts, completions)

def ten_prompts(**kwargs):  # 2 batches of 4 per epoch (2 rows dropped): resumes cross epochs
    from grpo_lightning.data.tasks.arithmetic import load_splits
    train, val = load_splits()
    return train[:10], val[:8]
"""


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    directory = tmp_path / "reward_pkg"
    directory.mkdir()
    (directory / "resume_rewards.py").write_text(REWARDS_SOURCE)
    monkeypatch.syspath_prepend(str(directory))
    return directory


def test_sampler_resumes_mid_epoch_with_the_same_order():
    full = ResumableSampler(20, 4, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    resumed = ResumableSampler(20, 4, shuffle=True, seed=3)
    resumed.resume_at(epoch=2, batches_done=3)
    assert list(resumed) == order[12:]
    assert list(resumed) == order, "the skip applies to one pass only"
    other = ResumableSampler(20, 4, shuffle=True, seed=3)
    other.set_epoch(3)
    assert list(other) != order and sorted(other) == sorted(order)


def test_sampler_shards_disjoint_equal_whole_batches():
    shards = [list(ResumableSampler(23, 3, shuffle=True, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 9  # 23 rows -> 3 batches of 3 per process
    assert not set(shards[0]) & set(shards[1])
    val = [list(ResumableSampler(5, 2, shuffle=False, seed=0, rank=r, world_size=2, drop_last=False)) for r in range(2)]
    assert sorted(val[0] + val[1]) == list(range(5))  # validation keeps every row


def test_rng_state_roundtrip_covers_python_numpy_torch():
    import random

    import numpy as np

    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


@pytest.mark.parametrize("failure", ["killed", "disk full"])
def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_one(failure, tmp_path, monkeypatch):
    """Killed mid-write: the previous checkpoint stays, and the stray .tmp is the next write's to
    remove. A full disk: the same, the partial .tmp removed at once, and one line that says so."""
    from grpo_lightning.run.checkpoints import CheckpointWriteError

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    raised, message = {
        "killed": (KeyboardInterrupt(), None),
        "disk full": (
            RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1088 vs 1016"),
            r"writing the checkpoint .*last.ckpt failed .*a full disk",
        ),
    }[failure]

    def fail(obj, handle):
        handle.write(b"half a checkpoint")
        raise raised

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(KeyboardInterrupt if message is None else CheckpointWriteError, match=message):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["last.ckpt"] if failure == "disk full" else ["last.ckpt", f"last.ckpt.{os.getpid()}.tmp"])


def test_the_next_checkpoint_removes_what_killed_writers_left(tmp_path):
    path = tmp_path / "last.ckpt"
    stale = tmp_path / "last.ckpt.99999.tmp"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


FULL_DISK_AT_THE_SECOND_SAVE = """
import sys
import torch
from grpo_lightning.run.train import main

real_save, saves = torch.save, []


def save(obj, handle, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:
        handle.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1088 vs 1016")
    return real_save(obj, handle, *args, **kwargs)


torch.save = save
main()
"""


def test_grpo_train_on_a_full_disk_ends_with_one_line_and_resumes(random_arith_dir, reward_module, tmp_path):
    script = tmp_path / "full_disk_train.py"
    script.write_text(FULL_DISK_AT_THE_SECOND_SAVE)
    args = [
        f"model.name_or_path={random_arith_dir}",
        f"output_dir={tmp_path}/run",
        "validate_before_training=false",
        "trainer.enable_progress_bar=false",
        "data.batch_size=4",
        "algorithm.group_size=4",
        "trainer.val_every_n_steps=1000",
        "trainer.limit_val_batches=1",
        "checkpoint.every_n_steps=1",
        "trainer.max_steps=3",
        "ckpt_path=last",
    ]
    env = child_env()
    done = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: writing the checkpoint")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    resumed = _grpo_train(*args, cwd=tmp_path, extra_path=reward_module)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert _training_steps(tmp_path / "run") == [1, 2, 3]


def _rows(run_dir: Path) -> dict[int, dict[str, str]]:
    """Training rows of metrics.csv by step, without timings (they differ between runs)."""
    with open(run_dir / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("actor/loss")]
    return {int(row["step"]): {k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows}


def _requeue_args(model_dir: Path, tmp_path: Path, checkpoint_every: int) -> list[str]:
    """The command a requeued job repeats (ckpt_path=last): a step logged every step, a checkpoint
    every ``checkpoint_every`` steps, no validation in between."""
    return [
        f"model.name_or_path={model_dir}",
        f"output_dir={tmp_path}/run",
        *RESUME_SETTINGS,
        "validate_before_training=false",
        "trainer.enable_progress_bar=false",
        "data.batch_size=4",
        "trainer.limit_val_batches=1",
        "data.val_batch_size=8",
        "trainer.val_every_n_steps=1000",
        f"checkpoint.every_n_steps={checkpoint_every}",
        "trainer.log_every_n_steps=1",
        "ckpt_path=last",
    ]


def _training_steps(run_dir: Path) -> list[int]:
    """The step of every training row of metrics.csv, in file order: a step logged twice shows twice."""
    with open(run_dir / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("actor/loss")]


RESUME_SETTINGS = [
    "reward.functions.correct.fn=resume_rewards.ones",
    "algorithm.group_size=4",
    "algorithm.mini_batch_size=8",
    "algorithm.num_iterations=2",
    "algorithm.beta=0.04",
    "algorithm.entropy_coef=0.01",
    "generation.val_do_sample=true",
    "trainer.val_every_n_steps=2",
    "checkpoint.every_n_steps=2",
    "optim.lr=1e-3",
]


@pytest.mark.parametrize("frozen_weights", ["saved", "left_out"])
def test_resumed_run_matches_uninterrupted_bitwise(
    frozen_weights, compose_config, random_arith_dir, reward_module, tmp_path
):
    # 4 prompts x 4 completions, 2 mini-batches x 2 passes: 4 optimizer steps per training step,
    # with sampled validation every 2 steps, so every random stream and counter is exercised.
    # Left out, the KL reference comes back from model.name_or_path instead of the checkpoint.
    common = [f"model.name_or_path={random_arith_dir}", *RESUME_SETTINGS]
    if frozen_weights == "left_out":
        common.append("checkpoint.save_frozen_weights=false")
    train(compose_config(*common, f"output_dir={tmp_path}/full", "trainer.max_steps=5"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=2"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=5", "ckpt_path=last"))
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert sorted(resumed) == [1, 2, 3, 4, 5]  # history kept, steps 3-5 logged again
    assert float(full[4]["actor/grad_norm"]) > 0, "the test needs real updates"
    for step in (3, 4, 5):
        assert resumed[step] == full[step], f"step {step} differs after resume"
    exported = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for d in (tmp_path / "full", tmp_path / "part")
    ]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    has_reference = any(".reference_model." in key for key in exported[0])
    assert has_reference == (frozen_weights == "saved")


def test_a_checkpoint_without_frozen_weights_refuses_a_model_with_other_ones(
    compose_config, random_arith_dir, reward_module, tmp_path
):
    from grpo_lightning.config import ConfigError

    common = [
        f"model.name_or_path={random_arith_dir}",
        *RESUME_SETTINGS,
        "checkpoint.save_frozen_weights=false",
        "validate_before_training=false",
        f"output_dir={tmp_path}",
    ]
    train(compose_config(*common, "trainer.max_steps=2"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["frozen_weights_left_out"]["fingerprint"][0, 0] += 1.0  # as if the model's files had changed
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError, match=r"save_frozen_weights=false.*resume with the model.name_or_path"):
        train(compose_config(*common, "trainer.max_steps=3", "ckpt_path=last"))


def test_lora_with_frozen_weights_left_out_checkpoints_the_adapters_only(
    compose_config, random_arith_dir, reward_module, tmp_path
):
    common = [
        f"model.name_or_path={random_arith_dir}",
        *RESUME_SETTINGS,
        "model.lora.r=4",
        "checkpoint.save_frozen_weights=false",
        "validate_before_training=false",
        f"output_dir={tmp_path}",
    ]
    train(compose_config(*common, "trainer.max_steps=2"))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert saved and all("lora_" in key for key in saved), sorted(saved)[:5]
    train(compose_config(*common, "trainer.max_steps=3", "ckpt_path=last"))
    assert _training_steps(tmp_path) == [1, 2, 3]


def test_a_checkpoint_without_optimizer_moments_resumes_with_fresh_ones(
    compose_config, random_arith_dir, reward_module, tmp_path
):
    common = [
        f"model.name_or_path={random_arith_dir}",
        *RESUME_SETTINGS,
        "checkpoint.save_optimizer_state=false",
        "validate_before_training=false",
        f"output_dir={tmp_path}",
    ]
    train(compose_config(*common, "trainer.max_steps=2"))
    optimizer = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert optimizer["state"] == {} and optimizer["param_groups"][0]["lr"] == pytest.approx(1e-3)
    with pytest.warns(UserWarning, match="optimizer's moments start from zero"):
        train(compose_config(*common, "trainer.max_steps=3", "ckpt_path=last"))
    assert _training_steps(tmp_path) == [1, 2, 3]


def test_trimmed_checkpoints_are_refused_where_the_strategy_writes_its_own(compose_config):
    from grpo_lightning.config import ConfigError, to_train_config

    with pytest.raises(ConfigError, match=r"checkpoint.save_optimizer_state=false with trainer.strategy=fsdp"):
        to_train_config(compose_config("checkpoint.save_optimizer_state=false", "trainer.strategy=fsdp"))


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [2, 3])  # at the end of epoch 0, in the middle of epoch 1
def test_resume_across_epoch_boundaries_matches(stop_at, compose_config, random_arith_dir, reward_module, tmp_path):
    common = [
        f"model.name_or_path={random_arith_dir}",
        *RESUME_SETTINGS,
        "data.builder=resume_rewards.ten_prompts",
        "checkpoint.every_n_steps=1",
        "validate_before_training=false",
    ]
    train(compose_config(*common, f"output_dir={tmp_path}/full", "trainer.max_steps=5"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", f"trainer.max_steps={stop_at}"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=5", "ckpt_path=last"))
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step in range(stop_at + 1, 6):
        assert resumed[step] == full[step], f"step {step} differs after resume"


def test_resume_with_other_step_defining_settings_is_refused(compose_config, random_arith_dir, reward_module, tmp_path):
    from grpo_lightning.config import ConfigError

    common = [
        f"model.name_or_path={random_arith_dir}",
        *RESUME_SETTINGS,
        "validate_before_training=false",
        f"output_dir={tmp_path}/run",
    ]
    train(compose_config(*common, "trainer.max_steps=2"))
    with pytest.raises(
        ConfigError,
        match=r"written with algorithm.mini_batch_size=8 \(now 16\), "
        r"algorithm.num_iterations=2 \(now 1\)",
    ):
        train(
            compose_config(
                *common,
                "trainer.max_steps=4",
                "ckpt_path=last",
                "algorithm.mini_batch_size=16",
                "algorithm.num_iterations=1",
            )
        )


def test_random_states_of_another_process_count_are_refused():
    from grpo_lightning.config import ConfigError
    from grpo_lightning.run.resume import RNGStateCallback, capture_rng_state

    state = capture_rng_state()
    with pytest.raises(ConfigError, match="written by 2 processes and is resumed on 1"):
        RNGStateCallback().load_state_dict({"rng": state, "rng_per_rank": [state, state]})
    RNGStateCallback().load_state_dict({"rng": state})  # one process, as saved


DIVERGING_RANKS = '''
import sys
import torch
from grpo_lightning.module import GRPOModule
from grpo_lightning.run.train import load_config, train


def diverge(self, *_):
    """The processes' random states part ways, as they do whenever one decodes more tokens."""
    torch.rand(self.global_rank + 1)


GRPOModule.on_train_batch_start = diverge
train(load_config(sys.argv[1:]))
'''


@pytest.mark.slow
def test_two_process_resume_matches_uninterrupted(tmp_path):
    """Under DDP each process has its own random state; each must get its own back."""
    script = tmp_path / "diverging_ranks.py"
    script.write_text(DIVERGING_RANKS)
    common = [
        "trainer=ddp_cpu",
        "data.batch_size=2",
        "algorithm.group_size=4",
        "checkpoint.every_n_steps=2",
        "validate_before_training=false",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "optim.lr=1e-2",
        "reward.functions.correct.fn=tests.signals.alternating",
        "algorithm.entropy_coef=0.01",
    ]
    env = child_env(one_thread=True)

    def run(*args):
        done = subprocess.run(
            [sys.executable, str(script), *common, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    run(f"output_dir={tmp_path}/full", "trainer.max_steps=4")
    run(f"output_dir={tmp_path}/part", "trainer.max_steps=2")
    run(f"output_dir={tmp_path}/part", "trainer.max_steps=4", "ckpt_path=last")
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert all(float(full[step]["actor/grad_norm"]) > 0 for step in (3, 4)), "the test needs real updates"
    for step in (3, 4):
        assert resumed[step] == full[step], f"step {step} differs after resume"


def test_missing_checkpoint_file_is_a_config_error(compose_config, random_arith_dir, tmp_path):
    from grpo_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="ckpt_path='nowhere.ckpt' is not a file"):
        train(compose_config(f"model.name_or_path={random_arith_dir}", "ckpt_path=nowhere.ckpt"))


def _grpo_train(*args: str, cwd: Path, extra_path: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "grpo_lightning.run.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    """Until ``path`` exists; fails if the process ends first or it takes too long."""
    deadline = time.monotonic() + seconds
    while not path.is_file():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_the_same_command(
    random_arith_dir, reward_module, tmp_path
):
    """kill -9 in the steps before checkpoint.every_n_steps: relaunching the same command with
    ckpt_path=last (what a requeue does) starts the run again, and metrics.csv has each step once."""
    args = _requeue_args(random_arith_dir, tmp_path, checkpoint_every=1000)
    process = _grpo_train(*args, "trainer.max_steps=400", cwd=tmp_path, extra_path=reward_module)
    _wait_for(tmp_path / "run" / "metrics.csv", process)  # a step is logged, nothing saved yet
    process.kill()
    process.communicate(timeout=60)
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    relaunched = _grpo_train(*args, "trainer.max_steps=3", cwd=tmp_path, extra_path=reward_module)
    stdout, stderr = relaunched.communicate(timeout=300)
    assert relaunched.returncode == 0, stderr[-3000:]
    assert "stopped before its first checkpoint; starting it again from step 0" in stdout
    assert _training_steps(tmp_path / "run") == [1, 2, 3]


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_the_same_command_continues(
    random_arith_dir, reward_module, tmp_path
):
    """Ctrl-C (SIGINT) before the first scheduled checkpoint: the step finishes, last.ckpt is written,
    the command exits 130 with one line and no traceback; relaunched with ckpt_path=last it finishes
    and metrics.csv has every step once."""
    args = _requeue_args(random_arith_dir, tmp_path, checkpoint_every=1000)
    process = _grpo_train(*args, "trainer.max_steps=400", cwd=tmp_path, extra_path=reward_module)
    _wait_for(tmp_path / "run" / "metrics.csv", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "interrupted after " in stdout
    stopped_at = int(stdout.split("interrupted after ")[1].split()[0])
    assert 0 < stopped_at < 400 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    relaunched = _grpo_train(*args, f"trainer.max_steps={stopped_at + 2}", cwd=tmp_path, extra_path=reward_module)
    stdout, stderr = relaunched.communicate(timeout=300)
    assert relaunched.returncode == 0, stderr[-3000:]
    assert _training_steps(tmp_path / "run") == list(range(1, stopped_at + 3))


@pytest.mark.slow
def test_a_slurm_kill_after_the_grace_period_loses_nothing_saved_and_the_requeue_finishes(
    random_arith_dir, reward_module, tmp_path
):
    """SLURM at the time limit: SIGTERM, then SIGKILL when KillWait runs out, here before the step
    ends (a step longer than the grace period). The requeued command (ckpt_path=last) continues from
    the last checkpoint written, and metrics.csv has every step once: the rows logged after that
    checkpoint by the killed run are dropped and logged again."""
    hanging = "reward.functions.correct.fn=resume_rewards.ones_then_hang_in_step_4"
    args = [*_requeue_args(random_arith_dir, tmp_path, checkpoint_every=2), hanging]
    (tmp_path / "hang").touch()
    process = _grpo_train(*args, "trainer.max_steps=400", cwd=tmp_path, extra_path=reward_module)
    _wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)
    deadline = time.monotonic() + 300
    while max(_training_steps(tmp_path / "run"), default=0) < 3:  # a step logged after the checkpoint
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.kill()
    process.communicate(timeout=60)
    (tmp_path / "hang").unlink()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] // 4
    logged = _training_steps(tmp_path / "run")
    assert (saved, logged) == (2, [1, 2, 3])  # the killed run had logged past its last checkpoint
    relaunched = _grpo_train(*args, "trainer.max_steps=5", cwd=tmp_path, extra_path=reward_module)
    stdout, stderr = relaunched.communicate(timeout=300)
    assert relaunched.returncode == 0, stderr[-3000:]
    assert _training_steps(tmp_path / "run") == [1, 2, 3, 4, 5]


def test_a_resume_with_another_validation_cadence_labels_every_step_once(compose_config, random_arith_dir, tmp_path):
    common = [
        f"model.name_or_path={random_arith_dir}",
        "validate_before_training=false",
        "data.batch_size=4",
        "trainer.limit_val_batches=1",
        "data.val_batch_size=8",
        "checkpoint.every_n_steps=2",
    ]
    train(compose_config(*common, "trainer.max_steps=2", "trainer.val_every_n_steps=2"))
    train(compose_config(*common, "trainer.max_steps=5", "trainer.val_every_n_steps=3", "ckpt_path=last"))
    with open(tmp_path / "metrics.csv") as handle:
        rows = [("val" if row["val/reward/mean"] else "train", int(row["step"])) for row in csv.DictReader(handle)]
    assert rows == [
        ("train", 1),
        ("train", 2),
        ("val", 2),
        ("train", 3),
        ("val", 3),
        ("train", 4),
        ("train", 5),
        ("val", 5),
    ]


def test_a_checkpoint_of_another_model_is_refused_in_one_line(compose_config, random_arith_dir, tmp_path):
    from transformers import LlamaForCausalLM

    from grpo_lightning.config import ConfigError
    from grpo_lightning.data.tasks.arithmetic import build_tokenizer, model_config

    wider = tmp_path / "wider"
    config = model_config()
    config.intermediate_size *= 2
    LlamaForCausalLM(config).save_pretrained(wider)
    build_tokenizer().save_pretrained(wider)
    common = ["validate_before_training=false", "trainer.max_steps=1", f"output_dir={tmp_path}/run"]
    train(compose_config(f"model.name_or_path={random_arith_dir}", *common))
    resume = [*common[:1], "trainer.max_steps=2", f"output_dir={tmp_path}/run", "ckpt_path=last"]
    with pytest.raises(
        ConfigError, match=r"do not fit this model \(.*mlp.* is \[256, 128\] there and \[512, 128\] here"
    ):
        train(compose_config(f"model.name_or_path={wider}", *resume))
    with pytest.raises(ConfigError, match=r"do not fit this model \(\d+ weights missing .*, \d+ not in this model"):
        train(compose_config(f"model.name_or_path={random_arith_dir}", "model.lora.r=4", *resume))


@pytest.mark.parametrize("betas", [(0.0, 0.04), (0.04, 0.0)])
def test_a_resume_may_change_beta(betas, compose_config, random_arith_dir, tmp_path):
    """The KL reference is the initial policy, which every run builds from model.name_or_path."""
    common = [f"model.name_or_path={random_arith_dir}", "validate_before_training=false", f"output_dir={tmp_path}"]
    train(compose_config(*common, "trainer.max_steps=1", f"algorithm.beta={betas[0]}"))
    train(compose_config(*common, "trainer.max_steps=2", f"algorithm.beta={betas[1]}", "ckpt_path=last"))
    assert _training_steps(tmp_path) == [1, 2]
    assert bool(_rows(tmp_path)[2].get("actor/grpo_kl")) == (betas[1] > 0)


def test_a_finished_runs_checkpoint_given_to_a_new_output_dir_trains_nothing_and_ends_cleanly(
    compose_config, random_arith_dir, tmp_path
):
    common = [f"model.name_or_path={random_arith_dir}", "validate_before_training=false", "trainer.max_steps=1"]
    finished = train(compose_config(*common, f"output_dir={tmp_path}/first"))
    again = train(
        compose_config(*common, f"output_dir={tmp_path}/second", f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt")
    )
    assert again["val/reward/mean"] == finished["val/reward/mean"]
    assert (tmp_path / "second" / "policy").is_dir()


def test_a_bit_flipped_checkpoint_is_refused_rather_than_loaded(compose_config, random_arith_dir, tmp_path):
    from grpo_lightning.config import ConfigError

    common = [f"model.name_or_path={random_arith_dir}", "validate_before_training=false", f"output_dir={tmp_path}"]
    train(compose_config(*common, "trainer.max_steps=1"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the weights, which make up most of the file
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=False)["global_step"] >= 1  # torch takes it without a word
    with pytest.raises(ConfigError, match=r"is damaged: its record .* fails its CRC check"):
        train(compose_config(*common, "trainer.max_steps=2", "ckpt_path=last"))


def test_ckpt_path_last_keeps_a_finished_run_that_has_no_checkpoint(compose_config, random_arith_dir, tmp_path):
    from grpo_lightning.config import ConfigError

    common = [f"model.name_or_path={random_arith_dir}", "validate_before_training=false", "trainer.max_steps=1"]
    train(compose_config(*common, "checkpoint.enabled=false"))
    before = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match=r"holds a finished run without checkpoints .* give a new output_dir"):
        train(compose_config(*common, "ckpt_path=last"))
    assert (tmp_path / "metrics.csv").read_text() == before


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(random_arith_dir, reward_module, tmp_path):
    args = [
        f"model.name_or_path={random_arith_dir}",
        f"output_dir={tmp_path}/run",
        *RESUME_SETTINGS,
        "trainer.max_steps=400",
        "validate_before_training=false",
        "trainer.enable_progress_bar=false",
        "data.batch_size=4",
        "trainer.limit_val_batches=1",
        "data.val_batch_size=8",
        "trainer.val_every_n_steps=1000",
        "checkpoint.every_n_steps=1",
    ]
    process = _grpo_train(*args, cwd=tmp_path, extra_path=reward_module)
    _wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)  # the first step is done
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "pre-empted after" in stdout and "Traceback" not in stderr
    stopped_at = int(stdout.split("pre-empted after ")[1].split()[0])
    assert 0 < stopped_at < 400
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == stopped_at * 4  # 4 optimizer steps per training step

    resumed = _grpo_train(
        *[a.replace("trainer.max_steps=400", f"trainer.max_steps={stopped_at + 2}") for a in args],
        "ckpt_path=last",
        cwd=tmp_path,
        extra_path=reward_module,
    )
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert f"GRPO finished: {stopped_at + 2} steps" in stdout
    assert _training_steps(tmp_path / "run") == list(range(1, stopped_at + 3))  # one row per step, none twice


@pytest.mark.slow
def test_sigterm_stops_a_whole_sweep(random_arith_dir, reward_module, tmp_path):
    args = [
        "-m",
        "seed=0,1",
        f"model.name_or_path={random_arith_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *RESUME_SETTINGS,
        "trainer.max_steps=400",
        "validate_before_training=false",
        "trainer.enable_progress_bar=false",
        "data.batch_size=4",
        "trainer.limit_val_batches=1",
        "data.val_batch_size=8",
        "trainer.val_every_n_steps=1000",
        "checkpoint.every_n_steps=1",
    ]
    process = _grpo_train(*args, cwd=tmp_path, extra_path=reward_module)
    _wait_for(tmp_path / "sweep" / "0" / "checkpoints" / "last.ckpt", process)  # job #0 has done a step
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "pre-empted after" in stdout and "the sweep stops here" in stdout
    assert "#1 : seed=1" not in stdout + stderr and not (tmp_path / "sweep" / "1").exists()


def test_wandb_run_resumes_under_the_same_id(compose_config, random_arith_dir, tmp_path):
    from grpo_lightning.run.loggers import read_resume_info

    common = [
        f"model.name_or_path={random_arith_dir}",
        "logger=wandb",
        "logger.offline=true",
        "validate_before_training=false",
        "checkpoint.every_n_steps=1",
    ]
    train(compose_config(*common, "trainer.max_steps=1"))
    step, run_id = read_resume_info(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert step == 1 and run_id
    train(compose_config(*common, "trainer.max_steps=2", "ckpt_path=last"))
    assert read_resume_info(str(tmp_path / "checkpoints" / "last.ckpt")) == (2, run_id)  # logged as run_id
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, and "-1" after it when both runs started within the same second
    assert runs and all(re.search(rf"-{run_id}(-\d+)?$", run.name) for run in runs), runs
    # The completions table counts on from the checkpoint (step 2 of the run, not 1 of the process).
    states = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    assert [state for key, state in states.items() if key.startswith("CompletionsTable")] == [{"steps_seen": 2}]


def test_a_file_that_is_not_a_checkpoint_is_a_config_error(tmp_path):
    from grpo_lightning.config import ConfigError
    from grpo_lightning.run.loggers import read_resume_info

    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "weights_only.ckpt")
    for name in ("notes.ckpt", "weights_only.ckpt"):
        with pytest.raises(ConfigError, match=f"ckpt_path='.*{name}' is not a readable checkpoint of a grpo-train"):
            read_resume_info(str(tmp_path / name))


def test_a_fresh_run_into_another_runs_directory_is_refused(compose_config, random_arith_dir, tmp_path):
    from grpo_lightning.config import ConfigError

    common = [
        f"model.name_or_path={random_arith_dir}",
        "validate_before_training=false",
        "trainer.max_steps=1",
        "checkpoint.every_n_steps=1",
    ]
    train(compose_config(*common))
    before = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(
        ConfigError,
        match=r"already holds a run \(metrics.csv, checkpoints/last.ckpt\); continue "
        r"it with ckpt_path=last",
    ):
        train(compose_config(*common))
    assert (tmp_path / "metrics.csv").read_text() == before  # untouched
    train(compose_config(*common[:2], "trainer.max_steps=2", "ckpt_path=last"))  # continuing is fine


@pytest.mark.parametrize(
    "cadence",
    [
        ["trainer.val_every_n_steps=1", "checkpoint.every_n_steps=1"],  # the last step validated in fit
        ["trainer.val_every_n_steps=50", "checkpoint.every_n_steps=50"],  # ... after fit
        ["trainer.val_every_n_steps=1", "checkpoint.every_n_steps=50"],
    ],
)
def test_continuing_a_finished_run_neither_validates_again_nor_loses_its_results(
    cadence, compose_config, random_arith_dir, tmp_path
):
    common = [
        f"model.name_or_path={random_arith_dir}",
        "validate_before_training=false",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "data.batch_size=4",
        *cadence,
    ]
    finished = train(compose_config(*common))
    before = (tmp_path / "metrics.csv").read_text()
    again = train(compose_config(*common, "ckpt_path=last"))
    assert (tmp_path / "metrics.csv").read_text() == before  # no second final-validation row
    assert again["val/reward/mean"] == finished["val/reward/mean"]  # what a sweeper is given


def test_a_finished_run_killed_before_its_validation_record_is_not_validated_again(
    compose_config, random_arith_dir, tmp_path
):
    """The last step's validation is in the checkpoint written after it: a run killed before
    final_validation.json was written continues without a second validation row."""
    common = [
        f"model.name_or_path={random_arith_dir}",
        "validate_before_training=false",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "data.batch_size=4",
        "trainer.val_every_n_steps=1",
        "checkpoint.every_n_steps=1",
    ]
    finished = train(compose_config(*common))
    (tmp_path / "checkpoints" / "final_validation.json").unlink()  # as if killed before writing it
    before = (tmp_path / "metrics.csv").read_text()
    again = train(compose_config(*common, "ckpt_path=last"))
    assert (tmp_path / "metrics.csv").read_text() == before
    assert again["val/reward/mean"] == finished["val/reward/mean"]


def test_submitits_preemption_signal_writes_the_checkpoint_before_submitit_requeues(monkeypatch, tmp_path):
    """In a submitit job (hydra/launcher=slurm) SIGUSR2 would run submitit's handler mid-step, which
    requeues and exits at once; the callback lets the step finish, writes last.ckpt, then hands over."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from grpo_lightning.run.checkpoints import LastCheckpoint
    from grpo_lightning.run.preemption import PREEMPTED, PreemptionCallback, preemption_signals

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert signal.SIGUSR2 in preemption_signals()
    events = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: events.append(("submitit", signum)))
    try:
        trainer = SimpleNamespace(
            strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
            save_checkpoint=lambda path, weights_only: events.append(("saved", Path(path).name)),
            global_step=3,
            is_global_zero=True,
            should_stop=False,
            sanity_checking=False,
            state=SimpleNamespace(fn=TrainerFn.FITTING),
            enable_validation=False,
        )
        callback = PreemptionCallback(LastCheckpoint(tmp_path, every_n_optimizer_steps=100))
        callback.on_train_start(trainer, None)
        callback.on_train_batch_end(trainer, None, None, None, 0)
        callback.on_validation_end(trainer, None)
        assert events == []  # no signal, nothing happens
        os.kill(os.getpid(), signal.SIGUSR2)
        assert events == []  # the step is not interrupted
        callback.on_validation_end(trainer, None)  # the validation after a step: stop there
        callback.on_train_batch_end(trainer, None, None, None, 1)
        assert events == [("saved", "last.ckpt"), ("submitit", signal.SIGUSR2)]  # once
        assert trainer.should_stop and callback.preempted_at == 3
        os.kill(os.getpid(), signal.SIGUSR2)  # submitit's handler is back in place
        assert events[-1] == ("submitit", signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
        PREEMPTED.clear()


def test_dynamic_sampling_resumes_bitwise(compose_config, random_arith_dir, tmp_path):
    """The refill stream's position is in the checkpoint: a resumed run draws the same extra prompts."""
    common = [
        f"model.name_or_path={random_arith_dir}",
        "algorithm.group_size=4",
        "data.batch_size=4",
        "algorithm.filter_zero_std_groups=true",
        "algorithm.max_generation_rounds=4",
        "reward.functions.correct.fn=tests.signals.constant_for_even_first_digit",
        "generation.max_new_tokens=4",
        "checkpoint.every_n_steps=1",
        "validate_before_training=false",
        "trainer.val_every_n_steps=100",
        "trainer.limit_val_batches=1",
    ]
    train(compose_config(*common, f"output_dir={tmp_path}/full", "trainer.max_steps=4"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=2"))
    train(compose_config(*common, f"output_dir={tmp_path}/part", "trainer.max_steps=4", "ckpt_path=last"))
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert all(float(full[step]["sampling/rounds"]) > 1 for step in (1, 2)), "the test needs refills"
    for step in (3, 4):
        assert resumed[step] == full[step], f"step {step} differs after resume"


def test_a_run_into_a_directory_a_live_run_holds_is_refused(compose_config, random_arith_dir, tmp_path):
    """Two runs started in the same second share Hydra's default directory: the second is refused
    while the first is live; a lock whose process is gone is taken over and removed at the end."""
    import socket

    from grpo_lightning.config import ConfigError
    from grpo_lightning.run.run_dir import RUN_LOCK

    common = [
        f"model.name_or_path={random_arith_dir}",
        "validate_before_training=false",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "data.batch_size=4",
    ]
    lock = tmp_path / RUN_LOCK
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live process holds it
    with pytest.raises(
        ConfigError,
        match=r"is in use by another run \(process \d+\); two runs started in the "
        r"same second share Hydra's default directory",
    ):
        train(compose_config(*common))
    assert not (tmp_path / "metrics.csv").exists()
    lock.write_text("elsewhere 123")  # another host: cannot be checked
    with pytest.raises(ConfigError, match=f"If no run is live there, delete {re.escape(str(lock))}"):
        train(compose_config(*common))
    train(compose_config(*common, "ckpt_path=last"))  # a requeued job takes it over (no checkpoint yet)
    assert not lock.exists()
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(ConfigError, match=r"is in use by another run"):
        train(compose_config(*common, "trainer.max_steps=2", "ckpt_path=last"))
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    lock.write_text(f"{socket.gethostname()} {finished.stdout.strip()}")  # its process is gone
    train(compose_config(*common))
    assert (tmp_path / "metrics.csv").is_file() and not lock.exists()


_SIGNAL_IN_VALIDATION = {"armed": False}


def signal_in_first_validation(prompts, completions, **columns):
    """Rewards by completion length; while armed, sends SIGTERM to this process from the first
    validation batch (8 prompts, one greedy completion each; training batches hold 16)."""
    if _SIGNAL_IN_VALIDATION["armed"] and len(completions) == 8:
        _SIGNAL_IN_VALIDATION["armed"] = False
        os.kill(os.getpid(), signal.SIGTERM)
    return [float(len(c) % 3) for c in completions]


def _validation_rows(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return [(row["step"], row["val/reward/mean"]) for row in csv.DictReader(handle) if row.get("val/reward/mean")]


@pytest.mark.parametrize("max_steps", [4, 2])  # step 2's validation: mid-run / the last step's
def test_a_signal_during_validation_stops_the_run_there_and_it_resumes_bitwise(
    max_steps, compose_config, random_arith_dir, tmp_path
):
    from grpo_lightning.run.preemption import PREEMPTED

    common = [
        f"model.name_or_path={random_arith_dir}",
        "algorithm.group_size=4",
        "data.batch_size=4",
        f"reward.functions.correct.fn={__name__}.signal_in_first_validation",
        "generation.max_new_tokens=4",
        "checkpoint.every_n_steps=100",
        "validate_before_training=false",
        "trainer.val_every_n_steps=2",
        "trainer.limit_val_batches=1",
        "data.val_batch_size=8",
        f"trainer.max_steps={max_steps}",
    ]
    train(compose_config(*common, f"output_dir={tmp_path}/full"))
    _SIGNAL_IN_VALIDATION["armed"] = True
    try:
        train(compose_config(*common, f"output_dir={tmp_path}/part"))
        assert PREEMPTED.is_set() and not _SIGNAL_IN_VALIDATION["armed"]
    finally:
        _SIGNAL_IN_VALIDATION["armed"] = False
        PREEMPTED.clear()
    assert torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert _training_steps(tmp_path / "part") == [1, 2]  # stopped after step 2's validation
    train(compose_config(*common, f"output_dir={tmp_path}/part", "ckpt_path=last"))
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert sorted(resumed) == list(range(1, max_steps + 1)) and all(
        resumed[step] == full[step] for step in range(3, max_steps + 1)
    )
    assert _validation_rows(tmp_path / "part") == _validation_rows(tmp_path / "full")  # none missing, none twice


_SIGNAL_IN_STEP = {"calls": 0, "at": None}


def signal_in_a_training_step(prompts, completions, **columns):
    """Rewards by completion length; sends SIGTERM to this process from training call number
    ``_SIGNAL_IN_STEP["at"]`` (training batches hold 16 completions)."""
    if len(completions) == 16 and _SIGNAL_IN_STEP["at"] is not None:
        _SIGNAL_IN_STEP["calls"] += 1
        if _SIGNAL_IN_STEP["calls"] == _SIGNAL_IN_STEP["at"]:
            os.kill(os.getpid(), signal.SIGTERM)
    return [float(len(c) % 3) for c in completions]


def test_a_signal_during_a_step_stops_after_it_without_a_validation_and_counts_right(
    compose_config, random_arith_dir, tmp_path
):
    """The step finishes and is saved; no validation is squeezed in (Lightning validates when
    asked to stop), and the W&B completions table has counted the step the checkpoint holds."""
    from grpo_lightning.run.preemption import PREEMPTED

    common = [
        f"model.name_or_path={random_arith_dir}",
        "algorithm.group_size=4",
        "data.batch_size=4",
        f"reward.functions.correct.fn={__name__}.signal_in_a_training_step",
        "generation.max_new_tokens=4",
        "checkpoint.every_n_steps=100",
        "validate_before_training=false",
        "trainer.val_every_n_steps=3",
        "trainer.limit_val_batches=1",
        "data.val_batch_size=8",
        "trainer.max_steps=4",
        "logger=wandb",
        "logger.offline=true",
        "logger.log_completions_every=1",
    ]
    train(compose_config(*common, f"output_dir={tmp_path}/full"))
    _SIGNAL_IN_STEP.update(calls=0, at=2)
    try:
        train(compose_config(*common, f"output_dir={tmp_path}/part"))
        assert PREEMPTED.is_set()
    finally:
        _SIGNAL_IN_STEP.update(calls=0, at=None)
        PREEMPTED.clear()
    checkpoint = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert [state for key, state in checkpoint["callbacks"].items() if key.startswith("CompletionsTable")] == [
        {"steps_seen": 2}
    ]

    assert _validation_rows(tmp_path / "part") == []  # none after the pre-empted step 2
    train(compose_config(*common, f"output_dir={tmp_path}/part", "ckpt_path=last"))
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert sorted(resumed) == [1, 2, 3, 4] and all(resumed[step] == full[step] for step in (3, 4))
    assert _validation_rows(tmp_path / "part") == _validation_rows(tmp_path / "full")


def test_processes_started_together_take_no_lock(monkeypatch, tmp_path):
    """Under torchrun or srun only rank 0 could hold the lock, and its refusal would leave the
    other processes waiting at the first collective: no lock is taken there."""
    from grpo_lightning.run.run_dir import RUN_LOCK, output_dir_lock

    (tmp_path / RUN_LOCK).write_text(f"elsewhere {os.getpid()}")  # would refuse a single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with output_dir_lock(tmp_path, resuming=False):
        pass
    assert (tmp_path / RUN_LOCK).read_text() == f"elsewhere {os.getpid()}"  # untouched


def test_a_validation_without_batches_does_not_hold_back_a_checkpoint(tmp_path):
    """Lightning skips a validation whose loaders are empty without its end hooks: a save held
    back for it would never be written."""
    from types import SimpleNamespace

    from grpo_lightning.run.checkpoints import LastCheckpoint, validates_after_this_batch

    saved = []
    trainer = SimpleNamespace(
        enable_validation=True,
        num_val_batches=[0],
        val_check_batch=2,
        global_step=2,
        max_steps=10,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(total_batch_idx=1)),
        save_checkpoint=lambda path, weights_only: saved.append(path),
    )
    assert not validates_after_this_batch(trainer)
    LastCheckpoint(tmp_path, every_n_optimizer_steps=2).on_train_batch_end(trainer, None, None, None, 1)
    assert saved == [tmp_path / "last.ckpt"]
    trainer.num_val_batches = [3]
    assert validates_after_this_batch(trainer)
    LastCheckpoint(tmp_path, every_n_optimizer_steps=2).on_train_batch_end(trainer, None, None, None, 1)
    assert saved == [tmp_path / "last.ckpt"]  # held back until the validation ends


def test_checkpoints_pickle_nothing_of_ours_so_moving_a_module_cannot_break_a_resume(
    compose_config, random_arith_dir, tmp_path
):
    """A checkpoint names no class or function of grpo_lightning (its callback states are keyed by
    class name, its contents are plain data): checkpoints written before a module moved still load.
    (A last.ckpt written before the layered layout resumed under it, by hand on 2026-12-02.)"""
    import pickletools
    import zipfile

    train(compose_config(f"model.name_or_path={random_arith_dir}", "trainer.max_steps=1"))
    with zipfile.ZipFile(tmp_path / "checkpoints" / "last.ckpt") as archive:
        pickled = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    strings = [arg for _, arg, _ in pickletools.genops(pickled) if isinstance(arg, str)]
    assert any(s.startswith("torch") for s in strings), "the scan must see the pickle's globals"
    assert [s for s in strings if "grpo_lightning" in s] == []
