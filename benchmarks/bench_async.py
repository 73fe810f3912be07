"""Step time with synchronous and asynchronous rollouts (generation.max_staleness 0, 1, 2), side by side.

Each setting is one ``grpo-train`` run of its own (a fresh process, the same seed and overrides), on
the default task or on the real model (``--task smollm2``: experiment=smollm2_arithmetic, which
needs ``make real-model-install``). Reported per setting: the median and spread of the training
steps' wall time (perf/step_time_s, the first ``--warmup`` steps left out), the run's wall time,
and the ratio of the median to the synchronous one.

    python benchmarks/bench_async.py --task default --steps 24
    python benchmarks/bench_async.py --task smollm2 --steps 8 --warmup 2
"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

TASKS = {
    "default": [],
    "smollm2": ["experiment=smollm2_arithmetic"],
}


def run(task: str, staleness: int, threads: str, steps: int, directory: Path) -> tuple[list[float], float]:
    """The step times (s) of one run, and its wall time."""
    output = directory / f"staleness{staleness}-{threads}"
    command = [
        sys.executable,
        "-m",
        "grpo_lightning.run.train",
        *TASKS[task],
        f"output_dir={output}",
        f"trainer.max_steps={steps}",
        f"trainer.val_every_n_steps={steps}",
        "validate_before_training=false",
        "checkpoint.enabled=false",
        "trainer.enable_progress_bar=false",
        f"generation.max_staleness={staleness}",
        *([f"generation.sampler_threads={threads}"] if staleness > 0 and threads != "default" else []),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=common.REPOSITORY)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"staleness {staleness}: grpo-train failed\n{done.stderr[-3000:]}")
    with open(output / "metrics.csv") as handle:
        times = [float(row["perf/step_time_s"]) for row in csv.DictReader(handle) if row.get("perf/step_time_s")]
    return times, wall


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="default")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--sampler-threads", nargs="+", default=["default", "1"], help="generation.sampler_threads of async runs"
    )
    args = parser.parse_args()
    settings = [(s, t) for s in args.staleness for t in (["-"] if s == 0 else args.sampler_threads)]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for staleness, threads in settings:
            times, wall = run(args.task, staleness, threads, args.steps, Path(directory))
            kept = times[args.warmup :]
            rows.append((staleness, threads, statistics.median(kept), min(kept), max(kept), wall))
    base = rows[0][2]
    print("| max_staleness | sampler_threads | median step (s) | min-max (s) | run wall (s) | step vs first |")
    print("|---|---|---|---|---|---|")
    for staleness, threads, median, low, high, wall in rows:
        print(f"| {staleness} | {threads} | {median:.3f} | {low:.3f}-{high:.3f} | {wall:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
