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

import common

MODES = ("full", "shared")


def worker(args: argparse.Namespace) -> None:
    import torch

    from grpo_lightning.policy.scoring.logprobs import completion_logprobs_from_hidden

    num_prompts, group_size, prompt_length, completion_length = args.shape
    model = common.shape_worker_model(args)
    vocab_size = model.config.vocab_size
    prompts = torch.randint(4, vocab_size, (num_prompts, prompt_length)).repeat_interleave(group_size, 0)
    completions = torch.randint(4, vocab_size, (num_prompts * group_size, completion_length))
    masks = torch.ones_like(prompts), torch.ones_like(completions)

    def one_pass():
        logprobs, _ = completion_logprobs_from_hidden(
            model, prompts, masks[0], completions, masks[1], share_prompts=args.worker == "shared"
        )
        logprobs.sum().backward()
        return logprobs

    passes = common.time_passes(one_pass, args.repeats, between=lambda: model.zero_grad(set_to_none=True))
    common.emit_result({**passes.figures(), "logprobs": passes.last.detach().flatten()[:64].tolist()})


def main() -> None:
    parser = common.shape_parser(__doc__, ["8x4x8x8", "8x4x120x8", "4x8x64x32", "4x8x256x64"], repeats=15, modes=MODES)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"forward + backward of the completion log-probs, tiny Llama, {args.threads} thread(s), "
        f"median of {args.repeats} passes (min, max)"
    )
    print(
        common.table_header(
            "N x G x P x T", "full ms", "shared ms", "full / shared", "full peak rise MiB", "shared peak rise MiB"
        )
    )
    for text in args.shapes:
        results = {mode: common.run_shape_worker(__file__, mode, common.parse_shape(text), args) for mode in MODES}
        full, shared = (results[mode] for mode in MODES)
        common.check_agree(full["logprobs"], shared["logprobs"], 1e-4, f"{text}: shared and full log-probs differ")
        ms = {mode: common.Spread.of(results[mode]["seconds"], 1000) for mode in MODES}
        print(
            common.table_row(
                text,
                f"{ms['full'].median:.1f} {ms['full'].range(sep='-')}",
                f"{ms['shared'].median:.1f} {ms['shared'].range(sep='-')}",
                f"{ms['full'].median / ms['shared'].median:.2f}",
                f"{full['peak_rise_mib']:.1f}",
                f"{shared['peak_rise_mib']:.1f}",
            )
        )


if __name__ == "__main__":
    main()
