"""A picture of a cloud and its transformed extremes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch

from boundflow.atomic import atomic_savefig
from boundflow.pointcloud import transforms as tf


def plot_cloud(
    points: torch.Tensor,
    transform: str,
    theta_lower,
    theta_upper,
    path: str | Path,
    title: str = "",
    unit: str = "rad",
) -> None:
    """The cloud (grey) and the clouds at every corner of the theta range (coloured); the
    corners are labelled in ``unit`` (``"deg"`` for a range given in degrees, ``"rad"``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5.5, 5))
    ax = fig.add_subplot(projection="3d")
    p = points.detach().double()
    ax.scatter(*p.T.numpy(), s=8, c="grey", label="original")
    for i, corner in enumerate(itertools.product(*zip(theta_lower, theta_upper))):
        q = tf.apply(p, transform, torch.tensor(corner, dtype=torch.float64))
        shown = [math.degrees(c) if unit == "deg" else c for c in corner]
        text = ", ".join(f"{c:.4g}{'°' if unit == 'deg' else ''}" for c in shown)
        ax.scatter(*q.T.numpy(), s=6, color=f"C{i}", label=f"theta = {text}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(f"{transform}: {title}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
