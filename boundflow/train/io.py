"""Saving and loading parameter bounds with their config and metrics (atomically)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from boundflow.atomic import atomic_torch_save
from boundflow.train.trainer import ParameterBounds, TrainConfig

__all__ = ["save_bounds", "load_bounds"]


def save_bounds(path: str | Path, bounds: ParameterBounds, config: TrainConfig, extra: dict | None = None) -> None:
    """Write bounds, nominal parameters, optimiser state, config and metrics to ``path``
    (temporary file, fsync, rename: a crash leaves the old file or the new one, never half)."""
    payload = {
        "format": "boundflow-parameter-bounds/1",
        "lower": bounds.lower,
        "upper": bounds.upper,
        "nominal": bounds.nominal,
        "epochs_done": bounds.epochs_done,
        "diverged_at": bounds.diverged_at,
        "history": bounds.history,
        "best": bounds.best,
        "stopped_at": bounds.stopped_at,
        "optimizer_state": getattr(bounds, "optimizer_state", None),
        "nominal_state": getattr(bounds, "nominal_state", None),
        "config": asdict(config),
        "extra": extra or {},
    }
    atomic_torch_save(payload, path)


def load_bounds(path: str | Path) -> tuple[ParameterBounds, TrainConfig, dict]:
    """Inverse of :func:`save_bounds`: ``(bounds, config, extra)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no bounds file at {path}")
    payload = torch.load(path, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != "boundflow-parameter-bounds/1":
        raise ValueError(f"{path} is not a BoundFlow parameter-bounds file")
    b = ParameterBounds(
        payload["lower"],
        payload["upper"],
        payload["nominal"],
        payload["epochs_done"],
        payload["diverged_at"],
        payload["history"],
        payload.get("best"),
        payload.get("stopped_at"),
    )
    b.optimizer_state = payload.get("optimizer_state")  # type: ignore[attr-defined]
    b.nominal_state = payload.get("nominal_state")  # type: ignore[attr-defined]
    return b, TrainConfig(**payload["config"]), payload.get("extra", {})
