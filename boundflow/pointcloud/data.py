"""An embedded dataset of 3-D shapes sampled from parametric surfaces (no download), and a
loader for a user's point clouds.

Classes: sphere, cube, cylinder, cone, torus, pyramid.  Each cloud: ``n_points`` points sampled
uniformly in the surface parameters, a random scale per axis (0.8-1.2), a random rotation about
z and a small random tilt (the pose), centred and scaled into the unit ball.  Deterministic in
``seed``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLASSES", "make_shapes", "load_npz"]

CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")


def _surface(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    u, v = rng.random(n), rng.random(n)
    if kind == "sphere":
        th, ph = 2 * math.pi * u, np.arccos(2 * v - 1)
        return np.stack([np.sin(ph) * np.cos(th), np.sin(ph) * np.sin(th), np.cos(ph)], 1)
    if kind == "cube":
        face = rng.integers(0, 6, n)
        p = np.stack([2 * u - 1, 2 * v - 1, np.where(face % 2 == 0, 1.0, -1.0)], 1)
        axis = face // 2
        out = p.copy()
        out[axis == 1] = p[axis == 1][:, [0, 2, 1]]
        out[axis == 2] = p[axis == 2][:, [2, 0, 1]]
        return out
    if kind == "cylinder":
        th = 2 * math.pi * u
        return np.stack([np.cos(th), np.sin(th), 2 * v - 1], 1)
    if kind == "cone":
        th, h = 2 * math.pi * u, np.sqrt(v)  # area-uniform along the slant
        return np.stack([h * np.cos(th), h * np.sin(th), 1 - 2 * h], 1)
    if kind == "torus":
        th, ph = 2 * math.pi * u, 2 * math.pi * v
        return np.stack([(1 + 0.4 * np.cos(ph)) * np.cos(th), (1 + 0.4 * np.cos(ph)) * np.sin(th), 0.4 * np.sin(ph)], 1)
    if kind == "pyramid":
        face = rng.integers(0, 4, n)
        a, b = np.minimum(u, 1 - 1e-9), v
        h = 1 - np.sqrt(b)  # height fraction, area-uniform
        w = (1 - h) * (2 * a - 1)
        edge = 1 - h
        pts = np.stack(
            [
                np.select([face == 0, face == 1, face == 2], [w, edge, w], -edge),
                np.select([face == 0, face == 1, face == 2], [edge, w, -edge], w),
                2 * h - 1,
            ],
            1,
        )
        return pts
    raise ValueError(f"unknown shape {kind!r}; choose from {', '.join(CLASSES)}")


def _rotation(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    t = rng.uniform(-0.2, 0.2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    return rz @ rx


def make_shapes(n_per_class: int, n_points: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points (M, n_points, 3) float64, labels (M,))``, ``M = n_per_class * len(CLASSES)``."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_per_class):
        for c, kind in enumerate(CLASSES):
            p = _surface(kind, n_points, rng) * rng.uniform(0.8, 1.2, 3)
            p = p @ _rotation(rng).T
            p = p - p.mean(0)
            p = p / np.linalg.norm(p, axis=1).max()
            xs.append(p)
            ys.append(c)
    return torch.tensor(np.stack(xs)), torch.tensor(ys)


def load_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Point clouds from ``.npz`` with ``points`` (M, N, 3) and optional ``labels`` (M,)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"point-cloud file {path} not found")
    with np.load(path) as f:
        if "points" not in f:
            raise ValueError(f"{path}: needs an array 'points' of shape (M, N, 3); found {', '.join(f.files)}")
        pts = np.asarray(f["points"], dtype=np.float64)
        labels = np.asarray(f["labels"]).astype(np.int64) if "labels" in f else None
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise ValueError(f"{path}: 'points' must have shape (M, N, 3), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{path}: 'points' has {int((~np.isfinite(pts)).sum())} non-finite values")
    if labels is not None and labels.shape != (pts.shape[0],):
        raise ValueError(f"{path}: 'labels' must have shape ({pts.shape[0]},), got {labels.shape}")
    return torch.from_numpy(pts), None if labels is None else torch.from_numpy(labels)
