"""Scoring a GRPO batch with each distinct prompt run once (model.share_prompts) vs the full pass.

    python benchmarks/bench_shared_prompts.py
    python benchmarks/bench_shared_prompts.py --shapes 8x4x120x8 4x8x256x64 --threads 2

A batch is N prompts x G completions (prompt length P, completion length T, ``NxGxPxT``), as
the policy update sees it. Each (shape, mode) runs a forward and a backward pass of the
completion log-probs (the policy update's scoring) in its own subprocess, on the 0.66M Llama
of the arithmetic task: the time is the median of ``--repeats`` passes, the memory the rise of
the peak RSS (VmHWM) over the RSS before the first pass. The log-probs of both modes are
checked equal.

    full:   every row runs prompt + completion (P + T positions per row)
    shared: each distinct prompt once (N x P), then the rows' completions on its KV cache (G x T)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import _proc_status_mib  # noqa: E402

MODES = ("full", "shared")


def tiny_llama(positions: int, threads: int):
    """The arithmetic task's 0.66M Llama with random weights (seed 0) and room for ``positions``
    tokens, torch set to ``threads`` threads."""
    import torch
    from transformers import LlamaForCausalLM

    from grpo_lightning.data.tasks.arithmetic import model_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = model_config()
    config.max_position_embeddings = positions
    return LlamaForCausalLM(config)


def shape_parser(description: str, shapes: list[str], repeats: int, modes) -> argparse.ArgumentParser:
    """The options every NxGxPxT scoring benchmark takes, and its hidden worker options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=shapes,
        help="NxGxPxT: prompts, group size, prompt length, (padded) completion length",
    )
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", choices=modes, help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs=4, type=int, help=argparse.SUPPRESS)
    return parser


def run_worker(script: str, mode: str, shape: list[int], args: argparse.Namespace, *extra: str) -> dict:
    """Run ``script``'s worker for (mode, shape) in a subprocess; its last stdout line, as JSON."""
    command = [
        sys.executable,
        script,
        "--worker",
        mode,
        "--shape",
        *map(str, shape),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args: argparse.Namespace) -> None:
    import torch

    from grpo_lightning.policy.scoring.logprobs import completion_token_scores_from_hidden

    num_prompts, group_size, prompt_length, completion_length = args.shape
    model = tiny_llama(prompt_length + completion_length, args.threads)
    config = model.config
    rows = num_prompts * group_size
    prompts = torch.randint(4, config.vocab_size, (num_prompts, prompt_length)).repeat_interleave(group_size, 0)
    completions = torch.randint(4, config.vocab_size, (rows, completion_length))
    masks = torch.ones_like(prompts), torch.ones_like(completions)
    times, baseline = [], _proc_status_mib("VmRSS")
    for _ in range(args.repeats):
        started = time.perf_counter()
        logprobs, _ = completion_token_scores_from_hidden(
            model, prompts, masks[0], completions, masks[1], share_prompts=args.worker == "shared"
        )
        logprobs.sum().backward()
        times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    print(
        json.dumps(
            {
                "peak_rise_mib": _proc_status_mib("VmHWM") - baseline,
                "seconds": times,
                "logprobs": logprobs.detach().flatten()[:64].tolist(),
            }
        )
    )


def main() -> None:
    parser = shape_parser(
        __doc__.split("\n\n")[0], ["8x4x8x8", "8x4x120x8", "4x8x64x32", "4x8x256x64"], repeats=15, modes=MODES
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"forward + backward of the completion log-probs, tiny Llama, {args.threads} thread(s), "
        f"median of {args.repeats} passes (min, max)"
    )
    print("| N x G x P x T | full ms | shared ms | full / shared | full peak rise MiB | shared peak rise MiB |")
    print("|---|---|---|---|---|---|")
    for text in args.shapes:
        shape = [int(part) for part in text.split("x")]
        results = {mode: run_worker(__file__, mode, shape, args) for mode in MODES}
        full, shared = (results[mode] for mode in MODES)
        if max(abs(a - b) for a, b in zip(full["logprobs"], shared["logprobs"])) > 1e-4:
            raise AssertionError(f"{text}: shared and full log-probs differ")
        ms = {mode: statistics.median(results[mode]["seconds"]) * 1000 for mode in MODES}
        spread = {
            mode: f"{min(results[mode]['seconds']) * 1000:.1f}-{max(results[mode]['seconds']) * 1000:.1f}"
            for mode in MODES
        }
        print(
            f"| {text} | {ms['full']:.1f} ({spread['full']}) | {ms['shared']:.1f} ({spread['shared']}) | "
            f"{ms['full'] / ms['shared']:.2f} | {full['peak_rise_mib']:.1f} | {shared['peak_rise_mib']:.1f} |"
        )


if __name__ == "__main__":
    main()
