"""Experiment workflow: W&B tables, optimized metric and sweeps, progress lines, plots, config groups."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from grpo_lightning.config import ConfigError
from grpo_lightning.run.plots import (
    RunCurves,
    find_runs,
    informative_curves,
    panels_for,
    plot_runs,
    read_curves,
)
from grpo_lightning.run.plots import (
    main as grpo_plot,
)
from grpo_lightning.run.progress import ConsoleLog, step_summary
from grpo_lightning.run.train import check_optimized_metric, load_config, optimized_value, train
from grpo_lightning.types import RolloutSample
from tests.processes import child_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


# -- completions table rows ---------------------------------------------------------------


def test_rollout_sample_rows_keep_not_applicable_as_none():
    sample = RolloutSample(
        prompts=["1+1=", "1+1="],
        completions=["2", "3"],
        rewards={"correct": torch.tensor([1.0, 0.0]), "short": torch.tensor([0.5, 0.0])},
        applicable={"correct": torch.tensor([True, True]), "short": torch.tensor([True, False])},
        total=torch.tensor([1.5, 0.0]),
        advantages=torch.tensor([1.0, -1.0]),
        lengths=torch.tensor([1, 1]),
    )
    assert sample.columns() == [
        "prompt",
        "completion",
        "reward/correct",
        "reward/short",
        "reward",
        "advantage",
        "length",
    ]
    assert sample.rows() == [["1+1=", "2", 1.0, 0.5, 1.5, 1.0, 1], ["1+1=", "3", 0.0, None, 0.0, -1.0, 1]]


# -- W&B offline ----------------------------------------------------------------------------


def _wandb_records(path: Path):
    """The protobuf records of an offline run's ``.wandb`` file (W&B's 7-byte header, then a
    LevelDB log: 32 KiB blocks of chunks with a crc32c/length/type header; type 1 = whole record,
    2/3/4 = first/middle/last piece). Offline runs write no config.yaml or summary file."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    pos, pieces = 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = (0, 0) if left < 7 else struct.unpack_from("<HB", data, pos + 4)
        if kind == 0:  # block trailer padding
            pos += left
            continue
        pieces.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            yield record


def test_wandb_offline_run_holds_completions_tables_histograms_and_config(compose_config, random_arith_dir, tmp_path):
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "logger=wandb",
        "logger.offline=true",
        "logger.log_completions_every=1",
        "logger.group=g1",
        "logger.tags=[a,b]",
        "logger.run_name=my-run",
        "logger.id=abc123",
        "trainer.max_steps=2",
        "validate_before_training=false",
    )
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*-abc123"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    files = runs[0] / "files"
    tables = sorted((files / "media" / "table").glob("completions_*.table.json"))
    assert len(tables) == 2, "one table per logged step, none overwritten"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["prompt", "completion", "reward/correct", "reward", "advantage", "length"]
    assert len(table["data"]) == 4 * 8  # data.batch_size prompts x group_size completions
    assert all(row[0].endswith("=") for row in table["data"])
    records = list(_wandb_records(next(runs[0].glob("*.wandb"))))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_group, list(run.tags), run.display_name) == ("g1", ["a", "b"], "my-run")
    config = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert config["algorithm"]["group_size"] == 8 and config["logger"]["log_completions_every"] == 1
    logged = {
        item.key or "/".join(item.nested_key)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }
    assert {
        "completions/_type",
        "histograms/reward/_type",
        "histograms/response_length/_type",
        "reward/mean",
        "val/reward/mean",
    } <= logged
    assert (tmp_path / "metrics.csv").is_file() and _is_png(tmp_path / "reward_curve.png")


# -- optimized metric -------------------------------------------------------------------------


def test_optimized_value_returns_the_metric_and_is_loud_when_missing():
    assert optimized_value({"val/reward/mean": 0.25}, "val/reward/mean") == 0.25
    assert optimized_value({"val/reward/mean": 0.25}, None) is None
    with pytest.raises(ConfigError, match="never logged"):
        optimized_value({"reward/mean": 0.1}, "val/reward/mean")
    with pytest.raises(ConfigError, match="optimized_metric='val/acc'"):
        check_optimized_metric("val/acc", ["val/reward/mean", "reward/mean"])


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


TINY = [
    "trainer.max_steps=1",
    "trainer.val_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "data.batch_size=2",
    "data.val_batch_size=8",
    "algorithm.group_size=2",
    "checkpoint.enabled=false",
    "validate_before_training=false",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_and_returns_the_metric(random_arith_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = _grpo_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"model.name_or_path={random_arith_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert 0.0 <= best["best_value"] <= 1.0
    # algorithm.group_size is fixed on the command line (TINY), which takes it out of the search.
    assert set(best["best_params"]) == {"optim.lr", "algorithm.clip_range", "algorithm.beta"}
    assert len(find_runs([tmp_path / "sweep"])) == 2
    out = tmp_path / "sweep.png"
    grpo_plot([str(tmp_path / "sweep"), "-o", str(out)])
    assert _is_png(out)


@pytest.mark.slow
def test_a_sweep_runs_on_past_a_failing_job_and_refuses_a_shared_output_dir(random_arith_dir, tmp_path):
    model = f"model.name_or_path={random_arith_dir}"
    result = _grpo_train(
        "-m", "algorithm.group_size=1,2", model, f"hydra.sweep.dir={tmp_path}/a", *TINY[:5], *TINY[6:], cwd=tmp_path
    )
    assert result.returncode != 0
    assert "error: algorithm.group_size must be >= 2" in result.stderr
    assert "GRPO finished: 1 steps" in result.stdout  # job #1 ran after #0 failed
    result = _grpo_train(
        "-m", "seed=0,1", model, f"output_dir={tmp_path}/shared", f"hydra.sweep.dir={tmp_path}/b", *TINY, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "error: output_dir=" in result.stderr and "is shared by jobs #0 and #1 of this sweep" in result.stderr
    assert result.stdout.count("GRPO finished") == 1  # job #0's outputs left as they were


def test_a_sweep_job_claims_its_output_dir(tmp_path):
    from grpo_lightning.run.run_dir import claim_output_dir

    claim_output_dir(str(tmp_path / "run"), "/sweeps/1", 0)
    claim_output_dir(str(tmp_path / "run"), "/sweeps/1", 0)  # the same job again (a requeue)
    claim_output_dir(str(tmp_path / "run"), "/sweeps/2", 1)  # a later sweep may reuse it
    with pytest.raises(ConfigError, match="shared by jobs #1 and #0 of this sweep"):
        claim_output_dir(str(tmp_path / "run"), "/sweeps/2", 0)


def test_optimized_metric_never_logged_fails_loudly(random_arith_dir, tmp_path):
    result = _grpo_train(
        "optimized_metric=val/accuracy",
        f"model.name_or_path={random_arith_dir}",
        f"output_dir={tmp_path}",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "optimized_metric='val/accuracy'" in result.stderr and "Traceback" not in result.stderr


# -- progress and plots -------------------------------------------------------------------------


def test_console_line_has_reward_kl_and_step_time():
    metrics = {
        "reward/mean": torch.tensor(0.5),
        "actor/approx_kl": torch.tensor(0.002),
        "perf/step_time_s": torch.tensor(1.25),
        "val/reward/mean": torch.tensor(0.4),
    }
    assert step_summary(metrics) == {
        "reward": 0.5,
        "kl": pytest.approx(0.002),
        "val/reward": pytest.approx(0.4),
        "step_s": 1.25,
    }
    assert step_summary(metrics | {"actor/grpo_kl": torch.tensor(0.03)})["kl"] == pytest.approx(0.03)
    log = ConsoleLog(every_n_steps=10, total_steps=60)
    log.step = 20
    line = log.line(metrics)
    assert line.startswith("step 20/60 | reward 0.500 | kl 0.0020 | val/reward 0.400 | 1.25 s/step | ")


def test_a_validated_steps_line_waits_for_its_validation(monkeypatch, capsys):
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    import grpo_lightning.run.checkpoints as resume

    trainer = SimpleNamespace(
        is_global_zero=True,
        sanity_checking=False,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        callback_metrics={"reward/mean": torch.tensor(0.5)},
    )
    log = ConsoleLog(every_n_steps=1, total_steps=3)
    for validated, before, after in [(False, 0.1, 0.2), (True, 0.3, 0.9)]:
        monkeypatch.setattr(resume, "validates_after_this_batch", lambda _, validated=validated: validated)
        trainer.callback_metrics["val/reward/mean"] = torch.tensor(before)
        log.on_train_batch_end(trainer, None, None, None, 0)
        trainer.callback_metrics["val/reward/mean"] = torch.tensor(after)  # a validation's result
        log.on_validation_end(trainer, None)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | elapsed")[0].rsplit(" | ", 1)[0] for line in lines] == [
        "step 1/3 | reward 0.500 | val/reward 0.100",
        "step 2/3 | reward 0.500 | val/reward 0.900",
    ]


def test_run_writes_reward_curve_and_periodic_console_lines(compose_config, random_arith_dir, tmp_path, capsys):
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "trainer.max_steps=3",
        "trainer.enable_progress_bar=true",
        "trainer.console_log_every_n_steps=2",
        "algorithm.group_size=2",
        "checkpoint.enabled=false",
    )
    train(cfg)  # pytest's captured stdout is not a terminal: lines, not a bar
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]  # first, every 2, last
    validations = [line for line in out if line.startswith("validat")]
    assert validations[:2] == ["validating before training (1 batches)", validations[1]]
    assert validations[1].startswith("validation done: val/reward ") and validations[1].endswith(" s")
    assert len(validations) == 2 * 4  # the baseline and after each step: a line as each starts and ends
    assert all(" | reward " in line and " | kl " in line and " s/step | " in line for line in lines), lines
    assert _is_png(tmp_path / "reward_curve.png")
    curves = read_curves(tmp_path).curves
    assert curves["reward/mean"][0] == [1.0, 2.0, 3.0]  # training steps, one point each
    assert curves["val/reward/mean"][0] == [0, 1, 2, 3]  # the baseline, then after each step


def test_read_curves_takes_each_rows_step(tmp_path):
    # The baseline validation (step 0), training steps 1-3, the validation after step 3.
    (tmp_path / "metrics.csv").write_text(
        "epoch,reward/mean,step,val/reward/mean\n0,,0,0.1\n0,0.2,1,\n0,0.3,2,\n0,0.4,3,\n0,,3,0.5\n"
    )
    curves = read_curves(tmp_path).curves
    assert curves["reward/mean"] == ([1, 2, 3], [0.2, 0.3, 0.4])
    assert curves["val/reward/mean"] == ([0, 3], [0.1, 0.5])


def test_a_kl_that_is_zero_throughout_gets_no_panel():
    steps = [1, 2, 3]
    on_policy = RunCurves(
        "beta=0",
        {
            "reward/mean": (steps, [0.0, 0.0, 0.0]),
            "actor/approx_kl": (steps, [0.0] * 3),
            "response_length/mean": (steps, [4.0, 5.0, 6.0]),
        },
    )
    shown = informative_curves(on_policy)
    assert "actor/approx_kl" not in shown.curves and shown.curves["reward/mean"] == (steps, [0.0] * 3)
    assert [name for name, _ in panels_for([shown])] == ["reward", "response length (tokens)"]
    with_reference = RunCurves("beta=0.04", on_policy.curves | {"actor/grpo_kl": (steps, [0.0, 0.01, 0.02])})
    shown = informative_curves(with_reference)
    assert [name for name, _ in panels_for([shown])] == ["reward", "KL", "response length (tokens)"]
    assert "actor/approx_kl" not in shown.curves


def test_entropy_and_the_share_of_equal_groups_get_their_panels(tmp_path):
    """A collapse (entropy to ~0, every group sampling one answer) must be visible in the plot."""
    steps = [1, 2, 3]
    collapsing = RunCurves(
        "lr=2e-5",
        {
            "reward/mean": (steps, [0.2, 0.5, 0.6]),
            "actor/entropy": (steps, [0.66, 0.2, 0.04]),
            "reward/frac_zero_std": (steps, [0.25, 0.5, 1.0]),
        },
    )
    assert [name for name, _ in panels_for([collapsing])] == [
        "reward",
        "entropy (nats per token)",
        "groups with equal rewards",
    ]
    assert _is_png(plot_runs([collapsing], tmp_path / "curve.png"))


def test_grpo_plot_reports_a_directory_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grpo_plot([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no metrics.csv" in capsys.readouterr().err


# -- config groups ------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["experiment", "debug"])
def test_overlay_groups_hold_only_global_overrides(group):
    conf = Path(__file__).resolve().parents[2] / "conf" / group
    files = sorted(conf.glob("*.yaml"))
    assert files
    for path in files:
        assert path.read_text().lstrip().startswith("# @package _global_"), path.name
        # A defaults list may only swap whole groups (override /model: hf), never add new content.
        for entry in yaml.safe_load(path.read_text()).get("defaults", []):
            assert isinstance(entry, dict) and all(key.startswith("override /") for key in entry), path.name
        load_config([f"{group}={path.stem}", "output_dir=x"])  # composes against the schema


def test_debug_presets(tmp_path):
    fast = load_config(["debug=fast", "output_dir=x"])
    assert fast.trainer.max_steps == 1 and not fast.checkpoint.enabled
    overfit = load_config(["debug=overfit", "output_dir=x"])
    assert overfit.data.overfit_rows == overfit.data.batch_size
    assert load_config(["debug=profile", "output_dir=x"]).trainer.profiler == "simple"


def test_overfit_rows_validate_on_the_training_rows():
    from grpo_lightning.config import DataConfig
    from grpo_lightning.data.datamodule import PromptDataModule

    data = PromptDataModule.from_config(
        DataConfig(builder="grpo_lightning.data.tasks.arithmetic.load_splits", batch_size=4, overfit_rows=4)
    )
    assert data.train_rows == data.val_rows and len(data.train_rows) == 4


def test_slurm_launcher_and_optuna_sweeper_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from grpo_lightning.run.train import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hparams_search=optuna", "output_dir=x"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.optimized_metric == "val/reward/mean"


def test_a_wandb_run_without_an_account_is_a_config_error_naming_the_ways_out():
    from grpo_lightning.run.loggers import log_run_config

    UsageError = type("UsageError", (Exception,), {"__module__": "wandb.errors.errors"})

    class NoAccount:
        def log_hyperparams(self, params):
            raise UsageError("No API key configured. Use `wandb login` to log in.")

    with pytest.raises(
        ConfigError,
        match=r"No API key configured\. Use `wandb login` to log in\. Run `wandb login` "
        r"or set WANDB_API_KEY, or log without an account: logger.offline=true",
    ):
        log_run_config([NoAccount()], {})

    class Broken:
        def log_hyperparams(self, params):
            raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):  # other failures are not disguised
        log_run_config([Broken()], {})
