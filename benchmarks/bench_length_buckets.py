"""Scoring a GRPO batch whose completions differ in length: one padded block vs length buckets.

    python benchmarks/bench_length_buckets.py
    python benchmarks/bench_length_buckets.py --shapes 8x8x64x256 --threads 2

A batch is N prompts x G completions (prompt length P, completions padded to T, ``NxGxPxT``);
the completion lengths are drawn per row (``--lengths``): ``uniform`` in 1..T, or ``tail``
(three in four rows T/8 long, the rest T, as when a few completions run to the length limit).
Each (shape, mode) runs the policy update's scoring, forward and backward of the completion
log-probs through ``CausalLMPolicy.logprobs_and_entropy`` (shared prompts on), in its own subprocess on
the 0.66M Llama of the arithmetic task: the time is the median of ``--repeats`` passes, the
memory the rise of the peak RSS over the RSS before the first pass. The log-probs of the two
modes are checked equal.

    padded:  model.length_buckets=1, one [B, P+T] block
    buckets: model.length_buckets=4, up to 4 blocks of rows of similar length, each trimmed
"""

from __future__ import annotations

import argparse

import common

MODES = {"padded": 1, "buckets": 4}


def completion_lengths(rows: int, longest: int, kind: str, generator) -> list[int]:
    import torch

    if kind == "uniform":
        return torch.randint(1, longest + 1, (rows,), generator=generator).tolist()
    return [longest if torch.rand((), generator=generator) < 0.25 else max(1, longest // 8) for _ in range(rows)]


def worker(args: argparse.Namespace) -> None:
    import torch

    from grpo_lightning.policy.causal_lm import CausalLMPolicy
    from grpo_lightning.types import TokenBatch

    num_prompts, group_size, prompt_length, completion_length = args.shape
    model = common.shape_worker_model(args)
    vocab_size = model.config.vocab_size
    policy = CausalLMPolicy(model, common.task_tokenizer(), share_prompts=True, length_buckets=MODES[args.worker])
    rows = num_prompts * group_size
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor(completion_lengths(rows, completion_length, args.lengths, generator))
    completion_mask = (torch.arange(completion_length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    prompts = torch.randint(4, vocab_size, (num_prompts, prompt_length), generator=generator)
    batch = TokenBatch(
        prompts.repeat_interleave(group_size, 0),
        torch.ones(rows, prompt_length, dtype=torch.long),
        torch.randint(4, vocab_size, (rows, completion_length), generator=generator) * completion_mask,
        completion_mask,
    )

    def one_pass():
        logprobs, _ = policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
        (logprobs * completion_mask).sum().backward()
        return logprobs

    passes = common.time_passes(one_pass, args.repeats, between=lambda: policy.model.zero_grad(set_to_none=True))
    kept = (passes.last * completion_mask).detach().flatten()
    common.emit_result(
        {
            **passes.figures(),
            "logprobs": kept[kept != 0][:256].tolist(),
            "split": policy._length_buckets(batch) is not None,
            "padding_share": 1 - completion_mask.float().mean().item(),
        }
    )


def main() -> None:
    parser = common.shape_parser(__doc__, ["8x4x8x8", "8x4x32x128", "4x8x64x256"], repeats=9, modes=list(MODES))
    parser.add_argument("--lengths", choices=["uniform", "tail"], default="tail")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"forward + backward of the completion log-probs, tiny Llama, {args.lengths} completion lengths, "
        f"{args.threads} thread(s), median of {args.repeats} passes (min-max)"
    )
    print(
        common.table_header(
            "N x G x P x T",
            "padding",
            "split",
            "padded ms",
            "buckets ms",
            "padded / buckets",
            "padded peak rise MiB",
            "buckets peak rise MiB",
        )
    )
    for text in args.shapes:
        shape = common.parse_shape(text)
        results = {
            mode: common.run_shape_worker(__file__, mode, shape, args, "--lengths", args.lengths) for mode in MODES
        }
        padded, buckets = results["padded"], results["buckets"]
        common.check_agree(
            padded["logprobs"], buckets["logprobs"], 1e-4, f"{text}: bucketed and padded log-probs differ"
        )
        ms = {mode: common.Spread.of(result["seconds"], 1000) for mode, result in results.items()}
        print(
            common.table_row(
                text,
                f"{padded['padding_share']:.0%}",
                "yes" if buckets["split"] else "no",
                f"{ms['padded'].median:.1f} {ms['padded'].range(sep='-')}",
                f"{ms['buckets'].median:.1f} {ms['buckets'].range(sep='-')}",
                f"{ms['padded'].median / ms['buckets'].median:.2f}",
                f"{padded['peak_rise_mib']:.1f}",
                f"{buckets['peak_rise_mib']:.1f}",
            )
        )


if __name__ == "__main__":
    main()
