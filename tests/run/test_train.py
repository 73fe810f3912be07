"""End to end on CPU: the real config, a few GRPO steps, metrics, export, sweeps, W&B offline."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_lightning.run.train import train
from tests.processes import child_env

REQUIRED_METRICS = [
    "actor/policy_loss",
    "actor/clip_frac",
    "actor/approx_kl",
    "actor/grpo_kl",
    "actor/kl_penalty",
    "actor/entropy",
    "actor/ratio_mean",
    "actor/adv_mean",
    "actor/adv_std",
    "actor/grad_norm",
    "reward/mean",
    "reward/std",
    "reward/correct/mean",
    "reward/frac_zero_std",
    "response_length/mean",
    "response_length/clip_ratio",
    "perf/step_time_s",
    "perf/tokens_per_s",
    "val/reward/mean",
]


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _column(rows, name):
    return [float(row[name]) for row in rows if row.get(name) not in (None, "")]


def test_few_steps_log_every_metric_and_change_parameters(compose_config, random_arith_dir, tmp_path):
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "algorithm.beta=0.04",
        "algorithm.entropy_coef=0.01",
        "trainer.max_steps=3",
    )
    metrics = train(cfg)
    rows = _read_metrics(tmp_path)
    missing = [name for name in REQUIRED_METRICS if not _column(rows, name)]
    assert not missing, f"metrics never logged: {missing}"
    assert len(_column(rows, "actor/policy_loss")) == 3  # one row per training step
    assert len(_column(rows, "val/reward/mean")) >= 2  # before the first update, and later
    assert {"val/reward/mean", "reward/mean", "actor/loss"} <= metrics.keys()  # the final validation keeps both
    before = load_file(random_arith_dir / "model.safetensors")
    after = load_file(tmp_path / "policy" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_beta_zero_logs_no_kl_and_builds_no_reference(compose_config, random_arith_dir, tmp_path):
    cfg = compose_config(f"model.name_or_path={random_arith_dir}", "algorithm.beta=0.0")
    train(cfg)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "actor/grpo_kl" not in header and "actor/kl_penalty" not in header
    assert "actor/entropy" in header


def test_reinforce_pp_with_kl_to_go_trains_on_generated_rollouts(compose_config, random_arith_dir, tmp_path):
    """Per-token advantages from generated rollouts: gamma applies (no warning that it does not),
    the KL still to come is paid in the reward, and the logged advantages are per token."""
    import warnings

    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "algorithm.adv_estimator=reinforce_pp",
        "algorithm.beta=0.05",
        "algorithm.kl_in_reward=true",
        "algorithm.kl_estimator=k1",
        "algorithm.gamma=0.9",
        "reward.functions.correct.fn=tests.signals.alternating",  # spread in every batch, whatever is sampled
        "validate_before_training=false",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="algorithm.gamma only applies")
        train(cfg)
    rows = [row for row in _read_metrics(tmp_path) if row.get("actor/adv_mean")]
    assert len(rows) == 2
    for row in rows:
        assert abs(float(row["actor/adv_mean"])) < 1e-5  # whitened over the batch's tokens
        assert float(row["actor/adv_std"]) == pytest.approx(1.0, abs=1e-4)
        assert float(row["actor/grpo_kl"]) == float(row["actor/grpo_kl"])  # logged, not NaN


def test_gdpo_trains_on_generated_rollouts_with_two_reward_functions(compose_config, random_arith_dir, tmp_path):
    """Each function's scores reach the estimator: the advantages are whitened over the batch (mean 0,
    std 1), and each function is logged as before."""
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "algorithm.adv_estimator=gdpo",
        "reward.functions.correct.fn=tests.signals.alternating",
        "+reward.functions.again.fn=tests.signals.alternating",
        "+reward.functions.again.weight=0.5",
        "validate_before_training=false",
    )
    train(cfg)
    rows = [row for row in _read_metrics(tmp_path) if row.get("actor/adv_mean")]
    assert len(rows) == 2
    for row in rows:
        assert abs(float(row["actor/adv_mean"])) < 1e-5 and float(row["actor/adv_std"]) == pytest.approx(1.0, abs=1e-4)
        assert row["reward/again/mean"] != ""


def test_gradients_are_freed_after_each_update(compose_config, random_arith_dir, tmp_path, monkeypatch):
    from grpo_lightning.module import GRPOModule

    held, update_policy = [], GRPOModule._update_policy

    def update_and_count(self, update):
        update_policy(self, update)
        held.append(sum(p.grad is not None for p in self.policy.model.parameters()))

    monkeypatch.setattr(GRPOModule, "_update_policy", update_and_count)
    train(compose_config(f"model.name_or_path={random_arith_dir}", "trainer.max_steps=2"))
    assert held == [0, 0]  # none held through the next rollout


def test_several_iterations_and_mini_batches_count_training_steps(compose_config, random_arith_dir, tmp_path):
    # 4 prompts x 4 completions = 16 rows, mini-batches of 8 in micro-batches of 4, 2 passes:
    # 4 optimizer steps per training step; trainer.max_steps still counts training steps.
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "algorithm.group_size=4",
        "algorithm.num_iterations=2",
        "algorithm.mini_batch_size=8",
        "algorithm.micro_batch_size=4",
        "algorithm.entropy_coef=0.1",
        "trainer.max_steps=2",
    )
    train(cfg)
    rows = _read_metrics(tmp_path)
    assert len(_column(rows, "actor/policy_loss")) == 2
    ratios = _column(rows, "actor/ratio_mean")
    assert any(abs(r - 1.0) > 1e-7 for r in ratios), "later mini-batches must see ratio != 1"


def _grpo_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = child_env()
    return subprocess.run(
        [sys.executable, "-m", "grpo_lightning.run.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


SMALL = [
    "trainer.max_steps=1",
    "trainer.val_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_sweep_runs_four_jobs_in_their_own_directories(random_arith_dir, tmp_path):
    result = _grpo_train(
        "-m",
        "algorithm.clip_range=0.1,0.3",
        "seed=0,1",
        f"model.name_or_path={random_arith_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "validate_before_training=false",
        *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.csv"))
    assert len(jobs) == 4


def test_wandb_offline_logs_metrics_and_config(compose_config, random_arith_dir, tmp_path):
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}", "logger=wandb", "logger.offline=true", "trainer.max_steps=1"
    )
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    config_files = list(runs[0].glob("files/config.yaml"))
    history = list(runs[0].glob("*.wandb"))
    assert history and history[0].stat().st_size > 0
    if config_files:  # written at finish by recent wandb versions
        assert "group_size" in config_files[0].read_text()


def test_bad_config_exits_with_a_message_not_a_traceback(tmp_path):
    result = _grpo_train("algorithm.group_size=1", f"output_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert "algorithm.group_size must be >= 2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_every_algorithm_preset_trains(random_arith_dir, tmp_path):
    result = _grpo_train(
        "-m",
        "algorithm=grpo,dr_grpo,dapo,gspo,cispo,rloo,sapo,gmpo,gdpo,clip_cov,kl_cov",
        "trainer.max_steps=2",
        f"model.name_or_path={random_arith_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "validate_before_training=false",
        "trainer.val_every_n_steps=2",
        "trainer.limit_val_batches=1",
        "data.batch_size=2",
        "data.val_batch_size=8",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.csv"), key=lambda p: int(p.parent.name))
    presets = ["grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "sapo", "gmpo", "gdpo", "clip_cov", "kl_cov"]
    assert len(jobs) == len(presets)
    for job, preset in zip(jobs, presets):
        rows = _read_metrics(job.parent)
        assert len(_column(rows, "actor/policy_loss")) == 2, preset
        if preset == "dapo":
            assert _column(rows, "sampling/rounds") and _column(rows, "reward/overlong_penalty")
        if preset in ("grpo", "rloo"):  # beta > 0: the KL is computed (rloo folds it into the reward)
            assert _column(rows, "actor/grpo_kl"), preset


def test_step_metrics_reach_loggers_and_callbacks_as_lightning_log_dict_would(random_arith_dir, tmp_path, monkeypatch):
    from grpo_lightning.module import GRPOModule
    from grpo_lightning.run.train import load_config

    def run(name):
        overrides = [
            f"output_dir={tmp_path / name}",
            f"model.name_or_path={random_arith_dir}",
            "trainer.max_steps=5",
            "trainer.log_every_n_steps=2",
            "trainer.val_every_n_steps=3",
            "trainer.enable_progress_bar=false",
            "data.batch_size=4",
            "data.val_batch_size=16",
            "trainer.limit_val_batches=1",
        ]
        return train(load_config(overrides)), _read_metrics(tmp_path / name)

    callback, rows = run("direct")
    monkeypatch.setattr(
        GRPOModule, "_log_step_metrics", lambda self, metrics: self.log_dict(metrics, on_step=True, on_epoch=False)
    )
    expected_callback, expected_rows = run("log_dict")

    def untimed(metrics):
        return {k: v for k, v in metrics.items() if k not in ("perf/step_time_s", "perf/tokens_per_s", "step")}

    assert callback.keys() == expected_callback.keys() and untimed(callback) == untimed(expected_callback)
    assert rows[0].keys() == expected_rows[0].keys()
    assert [untimed(row) for row in rows] == [untimed(row) for row in expected_rows]
    # The same rows, labelled with the steps done (log_dict: one less): every 2nd of steps 1-5.
    assert [row["step"] for row in rows if row["actor/loss"]] == ["2", "4"]
    assert [int(row["step"]) - 1 for row in rows if row["actor/loss"]] == [
        int(row["step"]) for row in expected_rows if row["actor/loss"]
    ]


def test_metrics_csv_labels_each_row_with_the_steps_trained(random_arith_dir, tmp_path):
    from grpo_lightning.run.train import load_config

    overrides = [
        f"output_dir={tmp_path}",
        f"model.name_or_path={random_arith_dir}",
        "trainer.max_steps=4",
        "trainer.val_every_n_steps=2",
        "trainer.enable_progress_bar=false",
        "data.batch_size=4",
        "data.val_batch_size=16",
        "trainer.limit_val_batches=1",
        "checkpoint.enabled=false",
    ]
    train(load_config(overrides))
    rows = _read_metrics(tmp_path)
    kinds = [("val" if row["val/reward/mean"] else "train", int(row["step"])) for row in rows]
    # The baseline before any step, step k's metrics at k, the validation after step k at k too.
    assert kinds == [("val", 0), ("train", 1), ("train", 2), ("val", 2), ("train", 3), ("train", 4), ("val", 4)]


def test_limit_val_batches_zero_runs_no_validation(random_arith_dir, tmp_path):
    from grpo_lightning.run.train import load_config

    metrics = train(
        load_config(
            [
                f"output_dir={tmp_path}",
                f"model.name_or_path={random_arith_dir}",
                "trainer.max_steps=2",
                "trainer.limit_val_batches=0",
                "data.batch_size=4",
                "trainer.enable_progress_bar=false",
            ]
        )
    )
    assert "reward/mean" in metrics and not any(name.startswith("val/") for name in metrics)
    assert not any(name.startswith("val/") for name in _read_metrics(tmp_path)[0])


def test_the_readmes_reward_module_beside_the_command_is_found(random_arith_dir, tmp_path):
    """The README's custom reward, run as written: grpo-train (a console script, which, unlike
    python -m, does not put the working directory on the import path) imports ./my_rewards.py."""
    (tmp_path / "my_rewards.py").write_text(
        "def exact(prompts, completions, answer, **columns):\n"
        "    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "grpo-train"),
            "reward.functions.correct.fn=my_rewards.exact",
            f"model.name_or_path={random_arith_dir}",
            f"output_dir={tmp_path}/run",
            *SMALL,
        ],
        cwd=tmp_path,
        env=dict(env, WANDB_MODE="offline", HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward/correct/mean" in (tmp_path / "run" / "metrics.csv").read_text()


def test_a_default_run_imports_no_optional_package_it_does_not_use(tmp_path):
    """W&B, datasets, peft, Optuna, vLLM, gguf and submitit are imported only when configured: each
    costs resident memory a small run would otherwise carry (benchmarks/RESULTS.md)."""
    optional = ("wandb", "datasets", "peft", "optuna", "vllm", "gguf", "submitit", "pandas", "sklearn")
    probe = (
        "import sys\n"
        "from grpo_lightning.run.train import load_config, train\n"
        f"train(load_config(['output_dir={tmp_path / 'run'}', 'trainer.max_steps=1']))\n"
        f"print('IMPORTED', sorted({{m.split('.')[0] for m in sys.modules}} & set({optional!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED []" in done.stdout, done.stdout[-500:]
