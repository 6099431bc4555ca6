"""Plots of a certified training run (matplotlib, written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path

import torch

from boundflow.atomic import atomic_savefig

__all__ = ["plot_history", "plot_regions"]


def _save(fig, path: str | Path) -> None:
    atomic_savefig(fig, path, dpi=120, bbox_inches="tight")


def plot_history(history: list[dict], path: str | Path, title: str = "") -> None:
    """Certified accuracy (and nominal accuracy) — for regression the certified MSE bounds and
    the nominal MSE — and mean parameter-bound width per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if history and "certified_mse_upper" in history[0]:
        a1.semilogy(epochs, [h["certified_mse_upper"] for h in history], marker="o", label="certified MSE upper bound")
        a1.semilogy(epochs, [max(h["certified_mse_lower"], 1e-300) for h in history], marker=".", label="lower bound")
        if "nominal_mse" in history[0]:
            a1.semilogy(epochs, [h["nominal_mse"] for h in history], ls="--", label="nominal model MSE")
        a1.set_ylabel("test MSE (log scale)")
    else:
        if history and "certified_accuracy" in history[0]:
            a1.plot(epochs, [h["certified_accuracy"] for h in history], marker="o", label="certified accuracy")
            a1.plot(epochs, [h["nominal_accuracy"] for h in history], ls="--", label="nominal model accuracy")
        a1.set_ylabel("test accuracy (fraction)")
        a1.set_ylim(0, 1.02)
    a1.set_xlabel("epoch")
    a1.grid(alpha=0.3)
    a1.legend()
    a2.semilogy(epochs, [max(h["mean_width"], 1e-300) for h in history], marker="o", color="C3")
    a2.set_xlabel("epoch")
    a2.set_ylabel("mean parameter-bound width (log scale)")
    a2.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def plot_regions(
    model, bounds, x: torch.Tensor, y: torch.Tensor, path: str | Path, eps: float = 0.0, title: str = ""
) -> None:
    """For 2-D inputs: the certified class of every grid point (or abstain) and the points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from boundflow.train.certify import certify

    lo, hi = x.min(0).values - 0.5, x.max(0).values + 0.5
    gx, gy = torch.meshgrid(
        torch.linspace(lo[0], hi[0], 150, dtype=torch.float64),
        torch.linspace(lo[1], hi[1], 150, dtype=torch.float64),
        indexing="xy",
    )
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    classes = certify(model, bounds, grid, eps=eps).classes.reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = ListedColormap(["#d9d9d9", "#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc"])
    ax.pcolormesh(gx.numpy(), gy.numpy(), (classes + 1).numpy(), cmap=cmap, vmin=0, vmax=4, shading="auto")
    xn, yn = x.numpy(), y.numpy()
    for c, m in zip(range(int(y.max()) + 1), "os^v"):
        sel = yn == c
        ax.scatter(xn[sel, 0], xn[sel, 1], s=8, marker=m, edgecolors="k", linewidths=0.3, label=f"class {c}")
    from matplotlib.patches import Patch

    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    ax.set_title(title or "certified regions (grey: abstain)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color=cmap.colors[0], label="abstain")]
    handles += [Patch(color=cmap.colors[c + 1], label=f"certified {c}") for c in range(int(y.max()) + 1)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, borderaxespad=0)
    _save(fig, path)
    plt.close(fig)
