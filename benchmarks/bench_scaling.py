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
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import GROUP_SIZE, _run_worker, build_checkpoint, parse_args, step_intervals  # noqa: E402


def worker_arguments(args: argparse.Namespace, overrides: list[str]) -> argparse.Namespace:
    """bench_vs_trl's own arguments for one of our runs: its defaults, this sweep's settings."""
    worker_args = parse_args(
        [
            "--threads",
            str(args.threads),
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
        ]
    )
    worker_args.ours_override = overrides
    return worker_args


def measure(overrides: list[str], completions: int, args: argparse.Namespace, model_dir: Path, scratch: Path) -> dict:
    run = _run_worker("ours", args.steps, worker_arguments(args, overrides), model_dir, scratch)
    intervals, _ = step_intervals(run["step_ends"], args.warmup)
    step_s = statistics.median(intervals)
    return {
        "step_s": step_s,
        "min_s": min(intervals),
        "max_s": max(intervals),
        "length": run["mean_completion_length"],
        "peak_rss_mib": run["peak_rss_mib"],
        "tokens_per_s": completions * run["mean_completion_length"] / step_s,
    }


def report(label: str, value: int, completions: int, point: dict) -> None:
    print(
        f"| {label} = {value:>4} | {completions:>4} | {point['length']:6.2f} | "
        f"{point['step_s'] * 1000:8.1f} ({point['min_s'] * 1000:.0f}-{point['max_s'] * 1000:.0f}) | "
        f"{completions / point['step_s']:7.1f} | {point['tokens_per_s']:8.1f} | {point['peak_rss_mib']:6.0f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--vocab-size", type=int, default=32_000, help="the tiny model's vocabulary (bench_vs_trl)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--completions", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench_scaling-"))
    try:
        model_dir = build_checkpoint(args.size, scratch / f"model-{args.size}", args.vocab_size)
        vocabulary = f" (vocabulary {args.vocab_size})" if args.size == "tiny" else ""
        print(
            f"{args.size} model{vocabulary}, {args.device}, {args.precision}, {args.threads} thread(s), "
            f"{args.steps} steps per point, first {args.warmup} not timed\n"
        )
        print(
            "| swept | completions/step | mean length | step ms (min-max) | completions/s | tokens/s | peak RSS MiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for completions in args.completions:
            overrides = [f"data.batch_size={completions // GROUP_SIZE}"]
            report("completions", completions, completions, measure(overrides, completions, args, model_dir, scratch))
        base = 8 * GROUP_SIZE
        for new_tokens in args.new_tokens:
            overrides = [f"generation.max_new_tokens={new_tokens}"]
            report("max_new_tokens", new_tokens, base, measure(overrides, base, args, model_dir, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
