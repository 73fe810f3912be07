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

    logits: completion_token_scores, the model's [B, T+1, V] logits, log-softmax chunked
    hidden-unfused: completion_token_scores_from_hidden with the head called per chunk under
        activation checkpointing (what a head with hooks gets: a no-op hook keeps it from fusing)
    hidden-lookup-gradient: the head fused with the log-softmax and entropy (LinearTokenScores),
        the tied embedding's lookup forming its own dense [V, H] gradient, as ``nn.Embedding`` does
    hidden: the same, the lookup adding into the head's weight gradient (TiedWeightGradient)
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

MODES = ("logits", "hidden-unfused", "hidden-lookup-gradient", "hidden")


def worker(args: argparse.Namespace) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpo_lightning import logprobs as scoring
    from grpo_lightning.policy.scoring.logprobs import completion_token_scores, completion_token_scores_from_hidden

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=args.vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    prompt = torch.randint(0, args.vocab, (args.rows, 8))
    completion = torch.randint(0, args.vocab, (args.rows, args.completion_length))
    masks = torch.ones_like(prompt), torch.ones_like(completion)
    score = completion_token_scores if args.worker == "logits" else completion_token_scores_from_hidden
    if args.worker == "hidden-unfused":
        model.get_output_embeddings().register_forward_pre_hook(lambda *_: None)
    if args.worker == "hidden-lookup-gradient":
        scoring.TiedWeightGradient.for_model = staticmethod(lambda *_: None)
    times, baseline = [], _proc_status_mib("VmRSS")
    for _ in range(args.repeats):
        started = time.perf_counter()
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
        times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    print(
        json.dumps(
            {
                "peak_rise_mib": _proc_status_mib("VmHWM") - baseline,
                "seconds": times,
                "logprob_sum": logprobs.sum().item(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16, help="completions scored together")
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk-size", type=int, default=2, help="model.logprob_chunk_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--entropy-grad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="differentiate the entropy too (an entropy bonus); --no-entropy-grad: only log it",
    )
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
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
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        times = results[mode]["seconds"]
        print(
            f"  {mode:>14}: peak RSS rise {results[mode]['peak_rise_mib']:8.1f} MiB | "
            f"{statistics.median(times) * 1000:8.1f} ms per pass (min {min(times) * 1000:.1f}, "
            f"max {max(times) * 1000:.1f})"
        )
    a = results["logits"]["logprob_sum"]
    for mode in MODES[1:]:
        if abs(results[mode]["logprob_sum"] - a) > 1e-3 * abs(a):
            raise AssertionError(f"{mode} and logits disagree: {results[mode]['logprob_sum']} vs {a}")
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
