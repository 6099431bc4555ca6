"""Shared helpers for benchmark scripts: environment record and atomic output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch


def environment(seed: int | None = None) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "seed": seed,
    }


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def median(values):
    """Median of the values that are not ``None`` (``None`` if there are none)."""
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None
