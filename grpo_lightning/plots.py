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
# Figure without pyplot: no GUI backend is touched (clusters have no display, notebooks keep theirs).
from matplotlib.figure import Figure

# (panel title, [(metric, line label)]); a panel whose metrics a run never logged is skipped.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("reward", [("reward/mean", "train (sampled)"), ("val/reward/mean", "validation")]),
    ("KL", [("actor/grpo_kl", "to reference"), ("actor/approx_kl", "to sampling policy")]),
    ("response length (tokens)", [("response_length/mean", "mean")]),
]


@dataclass
class RunCurves:
    label: str
    curves: dict[str, tuple[list[float], list[float]]]  # metric -> (training steps, values)


def read_curves(run_dir: Path, label: Optional[str] = None) -> RunCurves:
    """Every metric column of ``run_dir/metrics.csv`` as (training step, value) points.

    Lightning writes a training step's metrics under the number of steps finished before it
    (0 for the first) and a validation's under the number finished before it ran: training
    points move one step right, so that step k's reward and the validation after step k line up.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; plots need the CSV logger's metrics.csv "
                                "(logger=csv, or logger=wandb which writes it too)")
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for name, value in row.items():
            if name not in ("step", "epoch") and value not in (None, ""):
                steps, values = curves.setdefault(name, ([], []))
                steps.append(int(row["step"]) + (0 if name.startswith("val/") else 1))
                values.append(float(value))
    return RunCurves(label or _label(run_dir), curves)


def _label(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        from omegaconf import OmegaConf

        # Overrides naming paths or the sweep's own settings do not tell runs apart.
        kept = [o for o in OmegaConf.load(overrides) if not o.split("=")[0].lstrip("+~").startswith(
            ("hydra", "output_dir", "model.name_or_path", "hparams_search"))]
        if kept:
            return ",".join(kept)
    return run_dir.name


def plot_runs(runs: Sequence[RunCurves], out: Path, title: Optional[str] = None) -> Path:
    """One panel per metric family, one colour per run; written to ``out``."""
    panels = [(name, lines) for name, lines in PANELS
              if any(metric in run.curves for run in runs for metric, _ in lines)]
    if not panels:
        raise ValueError("none of the runs logged reward, KL or response-length metrics")
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":"]
    for ax, (panel, lines) in zip(axes[0], panels):
        for index, run in enumerate(runs):
            for style, (metric, line_label) in zip(styles, lines):
                if metric not in run.curves:
                    continue
                steps, values = run.curves[metric]
                label = line_label if len(runs) == 1 else f"{run.label}: {line_label}"
                ax.plot(steps, values, style, color=colors[index % len(colors)], label=label,
                        marker="o" if metric.startswith("val/") else None, markersize=3)
        ax.set_title(panel)
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def plot_reward_curve(run_dir: Path) -> Path:
    """``run_dir/reward_curve.png``: train and validation reward, KL and response length."""
    run_dir = Path(run_dir)
    return plot_runs([read_curves(run_dir, label=run_dir.name)],
                     run_dir / "reward_curve.png", title=str(run_dir))


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
