"""Sample grids: a policy's images (``GenerativePolicy.sample_images``) before and after training,
as PNG files beside reward_curve.png, and as W&B images under logger=wandb."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import Tensor

SAMPLE_GRID_SIZE = 8
"""Rows and columns of a grid: 64 samples, drawn with the same seed before and after training."""
SAMPLE_GRID_SEED = 1234


def save_image_grid(images: Tensor, path: Path, columns: int, title: Optional[str] = None) -> Path:
    """Images [N, H, W] in [-1, 1] as one PNG grid, ``columns`` wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8 + (0.4 if title else 0)))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index].numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def save_sample_grid(policy: Any, path: Path, title: str, loggers: list[Any]) -> Optional[Path]:
    """The policy's sample grid at ``path`` (nothing for a policy without images), also sent to
    each W&B logger as an image keyed by the file's stem."""
    images = policy.sample_images(SAMPLE_GRID_SIZE * SAMPLE_GRID_SIZE, seed=SAMPLE_GRID_SEED)
    if images is None:
        return None
    save_image_grid(images, path, SAMPLE_GRID_SIZE, title)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_image(key=f"samples/{path.stem}", images=[str(path)])
    return path
