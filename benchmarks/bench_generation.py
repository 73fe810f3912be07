"""Sampling a GRPO batch: ``generate`` (generation.backend=hf) against the lean loop (loop).

    python benchmarks/bench_generation.py                         # tiny model, 32 rows x 8 tokens
    python benchmarks/bench_generation.py --rows 128 --max-new-tokens 32
    python benchmarks/bench_generation.py --prompt-tokens 120      # a 120-token preamble
    python benchmarks/bench_generation.py --vocab-size 16          # the task's 16 characters: no draw cost

The rows are 4 distinct prompts, each repeated rows/4 times (a GRPO group), optionally after the
same ``--prompt-tokens`` preamble. Three samplers run the same rows from the same seeds: ``hf``,
``loop-multinomial`` (the loop drawing with ``torch.multinomial`` as ``generate`` does: the same
tokens as ``hf``, checked) and ``loop`` (the loop as shipped, drawing by inverse CDF: the same
distribution, other tokens).
Reported: CPU time (this process, load-robust on a shared machine) and wall time per call,
median over ``--calls`` calls after one warm-up call each, with the min and max.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import build_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=0, help="preamble before every prompt")
    parser.add_argument("--vocab-size", type=int, default=32_000, help="the tiny model's vocabulary (bench_vs_trl)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import grpo_lightning.policy.generation.loop as generation_loop
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.base import SamplingParams
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    scratch = Path(tempfile.mkdtemp(prefix="bench_generation-"))
    try:
        checkpoint = build_checkpoint(args.size, scratch, args.vocab_size)
        policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(checkpoint)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    preamble = ("0123456789" * (args.prompt_tokens // 10 + 1))[: args.prompt_tokens]
    prompt_ids, prompt_mask = policy.encode_prompts(
        [preamble + prompt for prompt in ["12+34=", "56+78=", "90+12=", "34+5="] * (args.rows // 4)]
    )
    print(
        f"{args.size} model (vocabulary {policy.model.config.vocab_size}), {prompt_ids.size(0)} rows, "
        f"prompts of {prompt_ids.size(1)} tokens, max {args.max_new_tokens} new tokens, "
        f"{args.threads} thread(s), median of {args.calls} calls (min, max)"
    )
    outputs, cpu_medians = {}, {}
    inverse_cdf_draw = generation_loop.draw_tokens
    for sampler in ("hf", "loop-multinomial", "loop"):
        backend = sampler.split("-")[0]
        generation_loop.draw_tokens = (
            (lambda scores: torch.multinomial(scores.softmax(dim=-1), 1).squeeze(1))
            if sampler == "loop-multinomial"
            else inverse_cdf_draw
        )
        sampling = SamplingParams(args.max_new_tokens, backend=backend)
        policy.sample(prompt_ids, prompt_mask, sampling)  # warm-up
        cpu, wall = [], []
        for call in range(args.calls):
            torch.manual_seed(call)
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            outputs[sampler, call] = policy.sample(prompt_ids, prompt_mask, sampling)
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
        cpu_medians[sampler] = statistics.median(cpu)
        print(
            f"  {sampler:>16}: CPU {statistics.median(cpu) * 1000:7.1f} ms ({min(cpu) * 1000:.1f}, "
            f"{max(cpu) * 1000:.1f}) | wall {statistics.median(wall) * 1000:7.1f} ms "
            f"({min(wall) * 1000:.1f}, {max(wall) * 1000:.1f})"
        )
    for call in range(args.calls):
        torch.testing.assert_close(outputs["hf", call], outputs["loop-multinomial", call], rtol=0, atol=0)
    print(
        f"  loop-multinomial / hf CPU time: {cpu_medians['loop-multinomial'] / cpu_medians['hf']:.2f} "
        "(identical tokens)"
    )
    print(
        f"  loop / hf CPU time: {cpu_medians['loop'] / cpu_medians['hf']:.2f}; "
        f"loop / loop-multinomial: {cpu_medians['loop'] / cpu_medians['loop-multinomial']:.2f}"
    )


if __name__ == "__main__":
    main()
