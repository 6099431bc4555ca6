"""Atomic output: every result, checkpoint and figure BoundFlow writes goes through here.

A file is written to a temporary name in the same folder, flushed, fsynced and renamed over
the target, so a crash or an interrupt leaves the old file or the new one, never half of one.
New files get the usual permissions (``0666`` less the umask), not ``mkstemp``'s ``0600``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save", "atomic_savefig"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, payload: Any, indent: int = 2) -> None:
    """``payload`` as JSON (numbers that JSON lacks, e.g. numpy floats, as floats)."""
    atomic_write_text(path, json.dumps(payload, indent=indent, default=float))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    _atomic(Path(path), lambda f: torch.save(obj, f))


def atomic_savefig(fig, path: str | Path, **kwargs) -> None:
    """``fig.savefig(path, **kwargs)`` atomically (the format from the file name)."""
    buf = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".") or "png"
    fig.savefig(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue())
