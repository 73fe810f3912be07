"""Peak memory and time of scoring completions: full logits vs the LM head applied per chunk.

    python benchmarks/bench_logprobs.py                    # Qwen2-sized vocabulary, tiny decoder
    python benchmarks/bench_logprobs.py --rows 32 --completion-length 64 --chunk-size 4
    python benchmarks/bench_logprobs.py --no-entropy-grad      # entropy only logged (entropy_coef 0)

The decoder is deliberately small (2 layers, hidden 64) and the vocabulary that of Qwen2
(151,936), so the head and the log-softmax dominate as they do in LLM training. Each mode
runs a forward and a backward pass (log-probs and entropy, as in the policy update) in its own
subprocess; the figure is the rise of the peak RSS (VmHWM) over the RSS before the pass, and
the time is the median of ``--repeats`` passes. The outputs of all modes are checked equal. The
loss is the sum of the log-probs and entropies; with ``--no-entropy-grad`` the log-probs alone,
the entropy computed but only logged, as a GRPO update without an entropy bonus does.

    logits: completion_logprobs, the model's [B, T+1, V] logits, log-softmax chunked
    hidden-unfused: completion_logprobs_from_hidden with the head called per chunk under
        activation checkpointing (what a head with hooks gets: a no-op hook keeps it from fusing)
    hidden-lookup-gradient: the head fused with the log-softmax and entropy (FusedHeadLogprobs),
        the tied embedding's lookup forming its own dense [V, H] gradient, as ``nn.Embedding`` does
    hidden: the same, the lookup adding into the head's weight gradient (TiedWeightGradient)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import common

MODES = ("logits", "hidden-unfused", "hidden-lookup-gradient", "hidden")


def scoring_decoder(vocab: int):
    """A 2-layer, 64-wide Qwen2 decoder with a tied head of ``vocab`` ids, random weights (seed 0)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )


def worker(args: argparse.Namespace) -> None:
    import torch

    from grpo_lightning.policy.scoring.fused_head import TiedWeightGradient
    from grpo_lightning.policy.scoring.logprobs import completion_logprobs, completion_logprobs_from_hidden

    common.set_threads(args.threads)
    model = scoring_decoder(args.vocab)
    prompt = torch.randint(0, args.vocab, (args.rows, 8))
    completion = torch.randint(0, args.vocab, (args.rows, args.completion_length))
    masks = torch.ones_like(prompt), torch.ones_like(completion)
    score = completion_logprobs if args.worker == "logits" else completion_logprobs_from_hidden
    if args.worker == "hidden-unfused":
        model.get_output_embeddings().register_forward_pre_hook(lambda *_: None)
    if args.worker == "hidden-lookup-gradient":
        TiedWeightGradient.for_model = staticmethod(lambda *_: None)

    def one_pass():
        logprobs, entropy = score(
            model,
            prompt,
            masks[0],
            completion,
            masks[1],
            with_entropy=True,
            chunk_size=args.chunk_size,
            entropy_grad=args.entropy_grad,
        )
        (logprobs.sum() + (entropy.sum() if args.entropy_grad else 0)).backward()
        return logprobs

    passes = common.time_passes(one_pass, args.repeats, between=lambda: model.zero_grad(set_to_none=True))
    common.emit_result({**passes.figures(), "logprob_sum": passes.last.sum().item()})


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=16, help="completions scored together")
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk-size", type=int, default=2, help="model.logprob_chunk_size")
    common.add_repeats(parser, 3)
    common.add_threads(parser)
    parser.add_argument(
        "--entropy-grad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="differentiate the entropy too (an entropy bonus); --no-entropy-grad: only log it",
    )
    common.add_worker(parser, MODES)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"{args.rows} completions x {args.completion_length} tokens, vocabulary {args.vocab}, "
        f"chunk {args.chunk_size} rows, forward + backward "
        f"({'log-probs and entropy' if args.entropy_grad else 'log-probs; entropy logged'}), "
        f"{args.threads} thread(s)"
    )
    results = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--worker", mode] + sys.argv[1:]
        results[mode] = common.run_worker(command, args.threads, f"{mode} worker")
        spread = common.Spread.of(results[mode]["seconds"], 1000)
        print(
            f"  {mode:>14}: peak RSS rise {results[mode]['peak_rise_mib']:8.1f} MiB | "
            f"{spread.median:8.1f} ms per pass {spread.range(labels=True)}"
        )
    a = results["logits"]["logprob_sum"]
    for mode in MODES[1:]:
        b = results[mode]["logprob_sum"]
        common.check_agree([a], [b], 1e-3 * abs(a), f"{mode} and logits disagree: {b} vs {a}")
    median = {mode: statistics.median(results[mode]["seconds"]) for mode in MODES}
    rise = {mode: results[mode]["peak_rise_mib"] for mode in MODES}
    print(
        f"  hidden / logits peak rise: {rise['hidden'] / rise['logits']:.2f}; "
        f"hidden / hidden-unfused: peak rise "
        f"{rise['hidden'] / rise['hidden-unfused']:.2f}, "
        f"time {median['hidden'] / median['hidden-unfused']:.2f}; hidden / hidden-lookup-gradient: peak rise "
        f"{rise['hidden'] / rise['hidden-lookup-gradient']:.2f}, "
        f"time {median['hidden'] / median['hidden-lookup-gradient']:.2f}"
    )


if __name__ == "__main__":
    main()
