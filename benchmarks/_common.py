"""Shared helpers for benchmark scripts: environment record and atomic output."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

import torch

from boundflow.atomic import atomic_write_json, atomic_write_text


def _commit() -> str | None:
    """The short commit of the checkout the benchmark runs from (``+`` if it has changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def environment(seed: int | None = None) -> dict:
    return {
        "commit": _commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "seed": seed,
    }


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write_json(path, payload)


def write_text(path: str | Path, text: str) -> None:
    atomic_write_text(path, text)


def median(values):
    """Median of the values that are not ``None`` (``None`` if there are none)."""
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None
