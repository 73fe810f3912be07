"""How our GRPO step time grows with completions per step and with max_new_tokens.

    python benchmarks/bench_scaling.py                          # tiny model (32,000 ids), CPU, 1 thread
    python benchmarks/bench_scaling.py --steps 8 --completions 32 64 --new-tokens 8 32

Every point is one ``grpo-train`` run in its own subprocess with the settings of
bench_vs_trl.py (group size 4, beta 0.04, fp32, ...) except the swept one; the step time is
the median interval between step ends after the warm-up steps, and its spread the min and max
interval. The random policy stops at EOS on its own, so the mean completion length is
reported next to max_new_tokens: tokens per second is the fair throughput figure.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import common
from bench_vs_trl import GROUP_SIZE, PROMPTS_PER_STEP, parse_args, run_training_worker


def worker_arguments(args: argparse.Namespace, overrides: list[str]) -> argparse.Namespace:
    """bench_vs_trl's own arguments for one of our runs: its defaults, this sweep's settings."""
    worker_args = parse_args(common.flags(args, "threads", "device", "precision", "warmup", "steps"))
    worker_args.ours_override = overrides
    return worker_args


def measure(overrides: list[str], completions: int, args: argparse.Namespace, model_dir: Path, scratch: Path) -> dict:
    run = run_training_worker("ours", args.steps, worker_arguments(args, overrides), model_dir, scratch)
    return common.step_figures(run, args.warmup, completions)


def report(label: str, value: int, completions: int, point: dict) -> None:
    print(
        common.table_row(
            f"{label} = {value:>4}",
            f"{completions:>4}",
            f"{point['mean_completion_length']:6.2f}",
            f"{point['step_s'] * 1000:8.1f} ({point['step_s_min'] * 1000:.0f}-{point['step_s_max'] * 1000:.0f})",
            f"{point['completions_per_s']:7.1f}",
            f"{point['tokens_per_s']:8.1f}",
            f"{point['peak_rss_mib']:6.0f}",
        ),
        flush=True,
    )


def main() -> None:
    parser = common.make_parser(__doc__)
    common.add_model(parser)
    common.add_steps(parser, steps=8, help="training steps per point")
    common.add_threads(parser)
    common.add_device(parser)
    parser.add_argument("--completions", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[8, 32, 128])
    args = common.check_model(parser, parser.parse_args())

    scratch = Path(tempfile.mkdtemp(prefix="bench_scaling-"))
    try:
        model_dir = common.build_checkpoint(args.size, scratch / f"model-{args.size}", args.vocab_size)
        vocabulary = f" (vocabulary {args.vocab_size})" if args.size == "tiny" else ""
        print(
            f"{args.size} model{vocabulary}, {args.device}, {args.precision}, {args.threads} thread(s), "
            f"{args.steps} steps per point, first {args.warmup} not timed\n"
        )
        print(
            common.table_header(
                "swept",
                "completions/step",
                "mean length",
                "step ms (min-max)",
                "completions/s",
                "tokens/s",
                "peak RSS MiB",
            )
        )
        for completions in args.completions:
            overrides = [f"data.batch_size={completions // GROUP_SIZE}"]
            report("completions", completions, completions, measure(overrides, completions, args, model_dir, scratch))
        base = PROMPTS_PER_STEP * GROUP_SIZE
        for new_tokens in args.new_tokens:
            overrides = [f"generation.max_new_tokens={new_tokens}"]
            report("max_new_tokens", new_tokens, base, measure(overrides, base, args, model_dir, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
