"""Learning curves from ``metrics.csv``: one run's ``reward_curve.png``, and ``grpo-plot``.

    grpo-plot outputs/2026-01-01/12-00-00                 # one run -> ./grpo_plot.png
    grpo-plot multirun/2026-01-01/12-00-00 -o sweep.png   # every job of a sweep, overlaid

Each run is labelled by its Hydra overrides (``.hydra/overrides.yaml``, e.g. ``seed=1``) when it
has them, else by its directory name. The x-axis is the training step (one batch of prompts).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import matplotlib.lines

# Figure without pyplot: no GUI backend is touched (clusters have no display, notebooks keep theirs).
from matplotlib.figure import Figure

# (panel title, [(metric, line label)]); a panel whose metrics no run logged is skipped.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("reward", [("reward/mean", "train (sampled)"), ("val/reward/mean", "validation")]),
    ("KL", [("actor/grpo_kl", "to reference"), ("actor/approx_kl", "to sampling policy")]),
    ("response length (tokens)", [("response_length/mean", "mean")]),
    # A collapse shows here first: the entropy falls, and more groups sample one answer G times.
    ("entropy (nats per token)", [("actor/entropy", "policy")]),
    ("groups with equal rewards", [("reward/frac_zero_std", "share (no learning signal)")]),
]
ZERO_BY_CONSTRUCTION = {"actor/approx_kl", "actor/grpo_kl"}
"""KL curves that are exactly 0 throughout say nothing (the KL to the sampling policy with one
update per batch, where the ratio is 1): such a curve is left out, and its panel with it."""


@dataclass
class RunCurves:
    label: str
    curves: dict[str, tuple[list[float], list[float]]]  # metric -> (training steps, values)


def read_curves(run_dir: Path, label: Optional[str] = None) -> RunCurves:
    """Every metric column of ``run_dir/metrics.csv`` as (training step, value) points: a row's
    step is the training steps done when it was logged (step k's metrics and the validation
    after it both at k, the validation before training at 0)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; plots need the CSV logger's metrics.csv "
            "(logger=csv, or logger=wandb which writes it too)"
        )
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        logged = {
            name: float(value)
            for name, value in row.items()
            if name not in ("step", "epoch") and value not in (None, "")
        }
        step = int(row["step"])
        for name, value in logged.items():
            steps, values = curves.setdefault(name, ([], []))
            steps.append(step)
            values.append(value)
    return RunCurves(label or _label(run_dir), curves)


def _label(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        from omegaconf import OmegaConf

        # Overrides naming paths or the sweep's own settings do not tell runs apart.
        kept = [
            o
            for o in OmegaConf.load(overrides)
            if not o.split("=")[0]
            .lstrip("+~")
            .startswith(("hydra", "output_dir", "model.name_or_path", "hparams_search"))
        ]
        if kept:
            return ",".join(kept)
    return run_dir.name


def informative_curves(run: RunCurves) -> RunCurves:
    """``run`` without the KL curves that are 0 throughout (ZERO_BY_CONSTRUCTION)."""
    return RunCurves(
        run.label,
        {
            metric: points
            for metric, points in run.curves.items()
            if metric not in ZERO_BY_CONSTRUCTION or any(points[1])
        },
    )


def panels_for(runs: Sequence[RunCurves]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The PANELS with at least one curve in at least one run."""
    return [(name, lines) for name, lines in PANELS if any(metric in run.curves for run in runs for metric, _ in lines)]


def plot_runs(runs: Sequence[RunCurves], out: Path, title: Optional[str] = None) -> Path:
    """One panel per metric family, one colour per run; written to ``out``."""
    runs = [informative_curves(run) for run in runs]
    panels = panels_for(runs)
    if not panels:
        raise ValueError("none of the runs logged reward, KL, response-length or entropy metrics")
    many = len(runs) > 1
    fig = Figure(figsize=(4.2 * len(panels), 3.6 + (0.25 * len(runs) if many else 0)))
    axes = fig.subplots(1, len(panels), squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = [("-", "solid"), ("--", "dashed"), (":", "dotted")]
    for ax, (panel, lines) in zip(axes[0], panels):
        for index, run in enumerate(runs):
            for (style, _), (metric, line_label) in zip(styles, lines):
                if metric in run.curves:
                    ax.plot(
                        *run.curves[metric],
                        style,
                        color=colors[index % len(colors)],
                        label=None if many else line_label,
                        marker="o" if metric.startswith("val/") else None,
                        markersize=3,
                    )
        if many:  # colour = run (one legend below), line style = metric (in the title)
            logged = {metric for run in runs for metric in run.curves}
            key = ", ".join(f"{word}: {label}" for (_, word), (metric, label) in zip(styles, lines) if metric in logged)
            ax.set_title(f"{panel}\n({key})" if len(lines) > 1 else panel, fontsize=9)
        else:
            ax.set_title(panel)
            ax.legend(fontsize=7)
        ax.set_xlabel("training step")
    if many:
        handles = [matplotlib.lines.Line2D([], [], color=colors[i % len(colors)]) for i in range(len(runs))]
        fig.legend(handles, [run.label for run in runs], loc="lower center", ncol=min(len(runs), 3), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 * ((len(runs) + 2) // 3) if many else 0, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def plot_reward_curve(run_dir: Path) -> Path:
    """``run_dir/reward_curve.png``: train and validation reward, KL, response length, entropy and
    the share of groups with equal rewards."""
    run_dir = Path(run_dir)
    return plot_runs([read_curves(run_dir, label=run_dir.name)], run_dir / "reward_curve.png", title=str(run_dir))


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """The given run directories; a directory without metrics.csv stands for the runs inside it."""
    runs = []
    for path in map(Path, paths):
        if (path / "metrics.csv").is_file():
            runs.append(path)
        else:
            found = sorted((p.parent for p in path.glob("*/metrics.csv")), key=_numeric_name)
            if not found:
                raise FileNotFoundError(f"no metrics.csv in {path} nor in its subdirectories")
            runs += found
    return runs


def _numeric_name(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="grpo-plot", description="Overlay the learning curves of GRPO runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, or a sweep directory")
    parser.add_argument("-o", "--out", type=Path, default=Path("grpo_plot.png"), help="output image")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        runs = [read_curves(path) for path in find_runs(args.runs)]
        out = plot_runs(runs, args.out, title=args.title)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{len(runs)} run(s) -> {out}")


if __name__ == "__main__":
    main()
