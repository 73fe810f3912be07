"""The Hydra entry point: ``grpo-train`` (or ``python -m grpo_lightning.run.train``).

    grpo-train                                          # the embedded default, on CPU
    grpo-train algorithm.beta=0.04 trainer.max_steps=200
    grpo-train -m algorithm.clip_range=0.1,0.3 seed=0,1  # a sweep, one directory per job
    grpo-train logger=wandb                              # W&B (WANDB_MODE=offline works)
    grpo-train --cfg job                                 # print the composed config
    grpo-train model=hf model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct data=jsonl data.path=train.jsonl
    grpo-train experiment=gsm8k_qwen                    # Qwen2.5-0.5B-Instruct on GSM8K (GPU)
    grpo-train -m hparams_search=optuna                  # Optuna search for val/reward/mean
    grpo-train experiment=arith_kl                       # a named experiment (conf/experiment/)
    grpo-train debug=fast                                # one tiny step end to end

Configs live in ``conf/`` (``config.yaml`` holds the defaults list). Each run writes
``metrics.csv``, ``checkpoints/``, the trained policy (``policy/``, Hugging Face format) and
``reward_curve.png`` to its Hydra output directory, and ends by printing a short summary.
With ``optimized_metric`` set, ``grpo-train`` returns that metric's final value to Hydra (what
a sweeper such as Optuna optimizes).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from grpo_lightning.algo.numerics import NonFiniteError
from grpo_lightning.config import ConfigError, TrainConfig, register_configs, to_train_config
from grpo_lightning.data.datamodule import PromptDataModule
from grpo_lightning.data.formatting import PromptFormatter
from grpo_lightning.module import GRPOModule
from grpo_lightning.policy.agent import Agent
from grpo_lightning.policy.build import build_policy
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.rewards import RewardError, WeightedReward
from grpo_lightning.run.checkpoints import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    LastCheckpoint,
    checkpoint_dir,
    record_final_validation,
    recorded_final_validation,
    resolve_ckpt_path,
)
from grpo_lightning.run.images import save_sample_grid
from grpo_lightning.run.loggers import LoggerIdCallback, build_logger, finish_logger, log_run_config, read_resume_info
from grpo_lightning.run.plots import plot_reward_curve
from grpo_lightning.run.preemption import INTERRUPTED, PREEMPTED, PreemptionCallback
from grpo_lightning.run.progress import progress_callbacks
from grpo_lightning.run.resume import RESUME_FIXED_SETTINGS, RNGStateCallback, RunSettingsCallback
from grpo_lightning.run.run_dir import (
    claim_output_dir,
    output_dir_lock,
    refuse_finished_run_without_checkpoint,
    refuse_used_output_dir,
)
from grpo_lightning.run.wandb_tables import CompletionsTable

VAL_METRIC = "val/reward/mean"


def config_dir() -> str:
    """``conf/`` of a source checkout, else the copy installed inside the package."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no conf/config.yaml next to {package}")


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with command-line style overrides, outside ``grpo-train``.

    ``output_dir`` must be among the overrides (Hydra's job directory does not exist here).
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def refuse_stray_launcher_variables(trainer: L.Trainer) -> None:
    """LOCAL_RANK in the environment tells Lightning that an outside launcher started this process
    as one of several; left over in a shell (or inherited inside an srun step) it makes a
    multi-process run wait for ever for processes nobody starts. Lightning's own launch, torchrun
    (its own environment) and processes started by hand with a matching WORLD_SIZE are left alone."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (
        type(environment) is LightningEnvironment
        and environment.creates_processes_externally
        and trainer.world_size > 1
        and os.environ.get("WORLD_SIZE") != str(trainer.world_size)
    ):
        raise ConfigError(
            f"LOCAL_RANK={os.environ['LOCAL_RANK']} is set in the environment, so this process would be one of "
            f"{trainer.world_size} started by an outside launcher and wait for the others, which nobody starts "
            f"(WORLD_SIZE={os.environ.get('WORLD_SIZE')}); unset LOCAL_RANK, RANK and WORLD_SIZE to let "
            f"Lightning start the processes, or launch with torchrun --nproc-per-node {trainer.num_devices}"
        )


def optimizer_steps_per_batch(cfg: TrainConfig) -> int:
    """Optimizer steps in one training step: passes x mini-batches."""
    rollout_size = cfg.data.batch_size * cfg.algorithm.group_size
    return cfg.algorithm.num_iterations * (rollout_size // (cfg.algorithm.mini_batch_size or rollout_size))


def build_trainer(cfg: TrainConfig, resume_step: Optional[int] = None) -> L.Trainer:
    """A Trainer whose step counts are in training steps (batches of prompts).

    Under manual optimization Lightning's global_step counts optimizer steps, of which one
    GRPO training step takes optimizer_steps_per_batch(cfg); the limits are scaled to match.
    """
    run_dir = Path(cfg.output_dir)
    per_batch = optimizer_steps_per_batch(cfg)
    # Hooks run in list order: RNGStateCallback restores the training random state at the end of
    # a validation before a checkpoint is written there, and whatever counts steps
    # (CompletionsTable) counts before one is written at a step's end.
    callbacks = [RNGStateCallback(), LoggerIdCallback(), RunSettingsCallback(resume_settings(cfg))]
    if cfg.logger.kind == "wandb" and cfg.logger.log_completions_every > 0:
        callbacks.append(CompletionsTable(cfg.logger.log_completions_every))
    if cfg.checkpoint.enabled:
        last_checkpoint = LastCheckpoint(checkpoint_dir(run_dir), cfg.checkpoint.every_n_steps * per_batch)
        callbacks += [last_checkpoint, PreemptionCallback(last_checkpoint)]
    t = cfg.trainer
    progress = progress_callbacks(t.enable_progress_bar, t.console_log_every_n_steps, t.max_steps, per_batch)
    callbacks += progress
    return L.Trainer(
        max_steps=t.max_steps * per_batch,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        val_check_interval=t.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        profiler=t.profiler,
        # Lightning would add its tqdm bar; off a terminal the progress is ConsoleLog's lines.
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in progress),
        deterministic=t.deterministic,
        enable_checkpointing=False,  # LastCheckpoint writes them
        logger=build_logger(cfg.logger, str(run_dir), resume_step) or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        # Metric states first created under validate()'s inference mode could not be updated
        # by the validation runs inside fit(); no_grad is all generation needs.
        inference_mode=False,
        # PromptDataModule shards the prompts per process itself (resumable, see resume.py).
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
    )


def resume_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The values of RESUME_FIXED_SETTINGS in ``cfg``."""
    return {key: functools.reduce(getattr, key.split("."), cfg) for key in RESUME_FIXED_SETTINGS}


def _val_reward(trainer: L.Trainer) -> Optional[float]:
    value = trainer.callback_metrics.get(VAL_METRIC)
    return None if value is None else float(value)


def train(dict_cfg: DictConfig) -> dict[str, float]:
    """Build everything from the config, train, export the policy; return the final metrics."""
    cfg = to_train_config(dict_cfg)
    with output_dir_lock(Path(cfg.output_dir), resuming=cfg.ckpt_path is not None):
        return _train(cfg, dict_cfg)


def _train(cfg: TrainConfig, dict_cfg: DictConfig) -> dict[str, float]:
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.output_dir)
    resume_step = None
    starting_over = cfg.ckpt_path == "last" and ckpt_path is None
    if starting_over:
        print(
            f"ckpt_path=last: no checkpoint in {checkpoint_dir(cfg.output_dir)} yet, starting a new run "
            "(to continue an earlier run, pass its output_dir)",
            flush=True,
        )
        # A run stopped before its first checkpoint left nothing to continue from: the same
        # command starts it again from step 0, replacing its metrics (a finished run is kept).
        starting_over = refuse_finished_run_without_checkpoint(Path(cfg.output_dir))
    if ckpt_path is not None:
        resume_step, wandb_id = read_resume_info(ckpt_path)
        if resume_step >= cfg.trainer.max_steps:  # a finished run: nothing is logged again, keep every row
            resume_step = sys.maxsize
        cfg.logger.id = cfg.logger.id or wandb_id  # the W&B run continues in place
    elif not starting_over:
        refuse_used_output_dir(Path(cfg.output_dir))
    # The frozen reference policy is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    # Resumable through PromptDataModule.state_dict, which Lightning's check does not see.
    warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable.*")
    # Our CSV logger keeps a resumed run's rows, and a fresh run into another run's directory is
    # refused: the "previous log files will be deleted" warning (Hydra's files are there) misleads.
    warnings.filterwarnings("ignore", message=r".*exists and is not empty\. Previous log files.*")
    # Validation means are already summed across processes (StageMeans.compute).
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    quiet_library_noise()
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    agent = Agent.from_config(cfg.agent, system_prompt=cfg.data.system_prompt)
    added = agent.reward_functions() if agent is not None else {}
    # before the model: its errors come sooner
    reward = WeightedReward.from_config(cfg.reward, added, added_weight=cfg.agent.environment_reward_weight)
    policy = build_policy(cfg.model)
    prepare = None
    if isinstance(policy, CausalLMPolicy):  # text prompts, formatted for its tokenizer
        tools = agent.schemas if agent is not None else None
        formatter = PromptFormatter.from_config(cfg.data, policy.tokenizer, tools=tools, keep_prompts=agent is not None)
        policy.add_special_tokens = formatter.add_special_tokens
        prepare = formatter.prepare
    data = PromptDataModule.from_config(cfg.data, seed=cfg.seed, prepare=prepare)
    module = GRPOModule(
        policy,
        reward,
        algorithm=cfg.algorithm,
        generation=cfg.generation,
        optim=cfg.optim,
        checkpoint=cfg.checkpoint,
        prompt_key=cfg.data.prompt_key,
        agent=agent,
    )
    module.max_training_steps = cfg.trainer.max_steps
    check_optimized_metric(cfg.optimized_metric, module.train_means.names + module.val_means.names)
    try:
        trainer = build_trainer(cfg, resume_step)
    except (MisconfigurationException, ValueError, TypeError) as error:  # Lightning's check of trainer.*
        raise ConfigError(
            f"trainer: {error} (trainer.accelerator={cfg.trainer.accelerator}, "
            f"trainer.devices={cfg.trainer.devices}, trainer.strategy={cfg.trainer.strategy}, "
            f"trainer.precision={cfg.trainer.precision})"
        ) from None
    refuse_stray_launcher_variables(trainer)
    try:
        log_run_config(trainer.loggers, OmegaConf.to_container(dict_cfg, resolve=True))
        first_val = None
        if ckpt_path is None and trainer.is_global_zero:
            save_sample_grid(policy, Path(cfg.output_dir) / "samples_before.png", "before training", trainer.loggers)
        if cfg.validate_before_training and ckpt_path is None:
            trainer.validate(module, datamodule=data, verbose=False)
            first_val = _val_reward(trainer)
        # Our own checkpoints hold numpy/python random states, not only tensors.
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=False)
        # The last step's training metrics: a validate() call clears callback_metrics.
        final = dict(trainer.callback_metrics)
        preemption = next((c for c in trainer.callbacks if isinstance(c, PreemptionCallback)), None)
        if preemption is not None and preemption.preempted_at is not None:
            _record_final_validation(cfg, trainer, module)  # pre-empted in the last step's validation
            if trainer.is_global_zero:
                stopped = "interrupted" if preemption.received == signal.SIGINT else "pre-empted"
                print(
                    f"\n{stopped} after {preemption.preempted_at // optimizer_steps_per_batch(cfg)} steps: "
                    f"{checkpoint_dir(cfg.output_dir)}/last.ckpt written; continue with ckpt_path=last "
                    f"output_dir={cfg.output_dir}",
                    flush=True,
                )
            return {name: float(value) for name, value in final.items()}
        if module.validated_at_step != trainer.global_step:  # the last step's validation
            # Continuing a finished run trains nothing: its validation is on record. Every
            # process must decide alike (validate is collective): rank 0's reading counts.
            recorded = trainer.strategy.broadcast(
                recorded_final_validation(checkpoint_dir(cfg.output_dir), trainer.global_step)
                if trainer.is_global_zero and module.resumed_at_step == trainer.global_step
                else None
            )
            if recorded is None:
                trainer.validate(module, datamodule=data, verbose=False)
            else:
                module.last_val_metrics = recorded
        _record_final_validation(cfg, trainer, module)
        final.update(module.last_val_metrics)
    finally:
        finish_logger(trainer.loggers)  # a later run in this process must not log into this one
    metrics = {name: float(value) for name, value in final.items()}

    run_dir = Path(cfg.output_dir)
    if trainer.is_global_zero:
        policy.save_pretrained(run_dir / "policy")
        steps_done = trainer.global_step // optimizer_steps_per_batch(cfg)
        save_sample_grid(policy, run_dir / "samples_after.png", f"after {steps_done} steps", [])
        if (run_dir / "metrics.csv").is_file():
            plot_reward_curve(run_dir)
        _print_summary(
            first_val,
            metrics.get(VAL_METRIC),
            trainer.global_step // optimizer_steps_per_batch(cfg),
            time.perf_counter() - started,
            run_dir,
        )
    return metrics


def _record_final_validation(cfg: TrainConfig, trainer: L.Trainer, module: GRPOModule) -> None:
    """Keep the last step's validation beside the checkpoints once the run has finished."""
    finished = trainer.global_step >= trainer.max_steps
    if (
        cfg.checkpoint.enabled
        and trainer.is_global_zero
        and finished
        and module.validated_at_step == trainer.global_step
    ):
        record_final_validation(checkpoint_dir(cfg.output_dir), trainer.global_step, module.last_val_metrics)


def check_optimized_metric(name: Optional[str], declared: Sequence[str]) -> None:
    """Before training: ``optimized_metric`` must be a metric the module logs."""
    if name is not None and name not in declared:
        raise ConfigError(
            f"optimized_metric={name!r} is not a metric this run logs; choose one of "
            f"{sorted(declared)} (e.g. optimized_metric=val/reward/mean)"
        )


def optimized_value(metrics: dict[str, float], name: Optional[str]) -> Optional[float]:
    """The value ``main`` returns to Hydra's sweeper; loud when the run never logged it."""
    if name is None:
        return None
    if name not in metrics:
        raise ConfigError(
            f"optimized_metric={name!r} was never logged by this run (logged: "
            f"{sorted(metrics)}); a validation metric needs at least one validation run"
        )
    return metrics[name]


def _print_summary(
    first_val: Optional[float], last_val: Optional[float], steps: int, seconds: float, run_dir: Path
) -> None:
    def fmt(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(
        f"\nGRPO finished: {steps} steps in {seconds:.0f} s\n"
        f"  {VAL_METRIC}: {fmt(first_val)} -> {fmt(last_val)}\n"
        f"  outputs: {run_dir} (metrics.csv, reward_curve.png, checkpoints/, policy/)",
        flush=True,
    )


register_configs()


def quiet_library_noise() -> None:
    """Leave out what other libraries print on every run that says nothing about it: Lightning's
    deprecation warning about its own use of torch's ``LeafSpec`` (2.6), its LitLogger
    advertisement, and the progress bars of transformers (weight loading, shard writing) and
    datasets (file reading)."""
    import logging

    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advertisement)
    transformers_logging.disable_progress_bar()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _not_an_advertisement(record) -> bool:
    return "Tip: For seamless" not in record.getMessage()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # `python -m` puts the working directory first on the import path and a console script does
    # not: without it, reward.functions.*.fn=my_rewards.exact could not find ./my_rewards.py.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if sweep:
            claim_output_dir(cfg.output_dir, str(Path(hydra_cfg.sweep.dir).resolve()), hydra_cfg.job.num)
        metrics = train(cfg)
        if INTERRUPTED.is_set():
            if sweep:
                print("interrupted: the sweep stops here; jobs done so far keep their outputs", flush=True)
            sys.exit(130)
        if PREEMPTED.is_set():
            if sweep:  # the machine is going away: no further job of this sweep may start
                print("pre-empted: the sweep stops here; jobs done so far keep their outputs", flush=True)
                sys.exit(0)
            return None  # an unfinished run has no result to report to a sweeper
        return optimized_value(metrics, cfg.get("optimized_metric"))
    except (ConfigError, RewardError, NonFiniteError, CheckpointWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        if sweep:
            raise  # Hydra records this job as failed and runs the sweep's other jobs
        sys.exit(2)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: no new checkpoint
        print(
            f"\ninterrupted: {cfg.output_dir} keeps the checkpoints written so far; the same command with "
            "ckpt_path=last continues from the last one (or starts again where there is none)",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
