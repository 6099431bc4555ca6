"""Results folders: claimed before any work, never overwritten silently, and recorded.

Every command that writes results into an ``--out`` folder calls :func:`claim` first: it
refuses (:class:`~boundflow.errors.JobError`, one line) a folder that already holds the files
this run would write, unless ``--force`` was given (or the command resumes that run), and
refuses a folder it cannot write.
:func:`record` then writes ``run.json``: the command line, versions and machine.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["JobOutput", "claim", "record"]


def claim(
    folder: str | Path, names: list[str], force: bool = False, option: str = "--out", resume: bool = False
) -> Path:
    """Create ``folder`` if needed and return it; :class:`~boundflow.errors.JobError` (shown as
    one line by the ``boundflow`` command) when it holds any of ``names`` and neither ``force``
    nor ``resume`` (the command continues that run) is set, when it is a file, or when it is
    not writable.  ``force`` says on stderr what it replaces."""
    from boundflow.errors import JobError

    out = Path(folder)
    where = option.lstrip("-").replace("-", "_")
    shown_out = JobError.literal(out)
    if out.exists() and not out.is_dir():
        raise JobError(f"{{{where}}} {shown_out} is a file, not a folder")
    present = sorted(n for n in names if (out / n).exists())
    if present and not (force or resume):
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise JobError(
            f"{{{where}}} {shown_out} already holds a previous run's results ({shown}); "
            "pass {force} to replace them, or choose another folder"
        )
    if present and not resume:
        print(
            f"boundflow: --force: replacing {len(present)} result file(s) of a previous run in {out}", file=sys.stderr
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JobError(f"{{{where}}} {shown_out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise JobError(f"{{{where}}} {shown_out} is not writable")
    return out


def record(folder: str | Path, argv: list[str] | None, command: str = "boundflow") -> None:
    """``run.json`` in ``folder``: how the results next to it were made."""
    import json

    import numpy
    import torch

    import boundflow
    from boundflow.atomic import atomic_write_text

    info = {
        "command": " ".join([command, *(argv if argv is not None else sys.argv[1:])]),
        "cwd": os.getcwd(),
        "boundflow": boundflow.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(Path(folder) / "run.json", json.dumps(info, indent=2) + "\n")


@dataclass(kw_only=True)
class JobOutput:
    """What every library job's result says of its output: the results folder (``None``: nothing
    was written), the files it wrote there, and a short report (the lines the command prints)."""

    out: Path | None = None
    files: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
