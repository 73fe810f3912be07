"""``grpo_vectorized`` (one reshape) against ``grpo`` (index_add / scatter) on the same rewards.

    python benchmarks/bench_advantages.py                       # 4,096 completions, G = 8
    python benchmarks/bench_advantages.py --completions 65536 --group-size 16

Both estimators get identical inputs (consecutive groups, the layout generate_rollout makes);
their outputs are checked equal before timing. Each timing is the median of ``--repeats``
blocks of ``--calls`` calls, after a warm-up block; the spread is the min and max block.
"""

from __future__ import annotations

import time

import common
import torch

from grpo_lightning.algo.advantages import get_adv_estimator


def time_estimator(
    name: str, rewards: torch.Tensor, group_ids: torch.Tensor, group_size: int, calls: int, repeats: int
) -> list[float]:
    """Seconds per call, one figure per block of ``calls`` calls."""
    estimator = get_adv_estimator(name)
    kwargs = dict(group_ids=group_ids, group_size=group_size, eps=1e-8, normalize_by_std=True)
    for _ in range(calls):  # warm-up
        estimator(rewards, **kwargs)
    blocks = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            estimator(rewards, **kwargs)
        blocks.append((time.perf_counter() - started) / calls)
    return blocks


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--completions", type=int, default=4096)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--calls", type=int, default=200)
    common.add_repeats(parser, 7, help="blocks of --calls calls timed")
    common.add_threads(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    rewards = (torch.rand(args.completions, generator=generator) > 0.5).float()  # [N] 0/1
    group_ids = torch.arange(args.completions // args.group_size).repeat_interleave(args.group_size)
    results = {}
    for name in ("grpo", "grpo_vectorized"):
        out = get_adv_estimator(name)(
            rewards, group_ids=group_ids, group_size=args.group_size, eps=1e-8, normalize_by_std=True
        )
        results[name] = out
    torch.testing.assert_close(results["grpo"], results["grpo_vectorized"])

    timings = {
        name: time_estimator(name, rewards, group_ids, args.group_size, args.calls, args.repeats)
        for name in ("grpo", "grpo_vectorized")
    }
    print(
        f"{args.completions} completions, group size {args.group_size}, {args.threads} thread(s), "
        f"median of {args.repeats} blocks of {args.calls} calls (min, max)"
    )
    for name, blocks in timings.items():
        spread = common.Spread.of(blocks, 1e6)
        print(f"  {name:>15}: {spread.median:8.1f} us/call {spread.range()}")
    speedups = common.Spread.of([slow / fast for slow, fast in zip(timings["grpo"], timings["grpo_vectorized"])])
    print(f"  grpo / grpo_vectorized: {speedups.median:.2f}x {speedups.range('.2f')}")


if __name__ == "__main__":
    main()
