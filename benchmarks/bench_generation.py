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

import shutil
import tempfile
from pathlib import Path

import common
import torch


def main() -> None:
    parser = common.make_parser(__doc__)
    common.add_model(parser)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--calls", type=int, default=15)
    common.add_threads(parser)
    common.add_prompt_tokens(parser)
    args = common.check_model(parser, parser.parse_args())
    common.set_threads(args.threads)

    import grpo_lightning.policy.generation.loop as generation_loop
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.base import SamplingParams
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    scratch = Path(tempfile.mkdtemp(prefix="bench_generation-"))
    try:
        checkpoint = common.build_checkpoint(args.size, scratch, args.vocab_size)
        policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(checkpoint)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    preamble = common.preamble(args.prompt_tokens)
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
            started = common.clocks()
            outputs[sampler, call] = policy.sample(prompt_ids, prompt_mask, sampling)
            ended = common.clocks()
            wall.append(ended[0] - started[0])
            cpu.append(ended[1] - started[1])
        cpu_spread, wall_spread = common.Spread.of(cpu, 1000), common.Spread.of(wall, 1000)
        cpu_medians[sampler] = cpu_spread.median
        print(
            f"  {sampler:>16}: CPU {cpu_spread.median:7.1f} ms {cpu_spread.range()} | "
            f"wall {wall_spread.median:7.1f} ms {wall_spread.range()}"
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
