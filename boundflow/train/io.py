"""Saving and loading parameter bounds with their config and metrics; atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from boundflow.train.trainer import ParameterBounds, TrainConfig

__all__ = ["save_bounds", "load_bounds", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save"]


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


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
    )
    b.optimizer_state = payload.get("optimizer_state")  # type: ignore[attr-defined]
    b.nominal_state = payload.get("nominal_state")  # type: ignore[attr-defined]
    return b, TrainConfig(**payload["config"]), payload.get("extra", {})


def write_metrics(path: str | Path, metrics: dict) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2, default=float))
