"""Exceptions raised by BoundFlow, and helpers that make their messages point at user code."""

from __future__ import annotations

import inspect
import os
import re

__all__ = [
    "BoundFlowError",
    "UnsupportedOperation",
    "IntervalOpError",
    "DomainError",
    "JobError",
    "where_called",
]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class BoundFlowError(Exception):
    """Base class of BoundFlow's own errors."""


class UnsupportedOperation(BoundFlowError, NotImplementedError):
    """An ATen op reached a domain that has no rule for it.

    The message names the op (e.g. ``aten.cumprod.default``), the module chain and source line
    that called it, and how to register a rule.
    """


class IntervalOpError(BoundFlowError, RuntimeError):
    """An op with a rule failed on its interval operands (shapes, dtypes); names op and shapes."""


class DomainError(BoundFlowError, ValueError):
    """An interval reaches outside the mathematical domain of an op (``sqrt``/``log`` of
    negative numbers, a non-exact index).  No sound interval exists for such a result."""


class JobError(BoundFlowError, ValueError):
    """A job's settings (``train.TrainJob``, ``pointcloud.CertifyJob``, a results folder) cannot
    work; raised before any expensive work.

    The message names each setting in ``{braces}`` in ``template``: ``str(error)`` shows them as
    the job's field names (``batch_size``), :meth:`as_options` as command-line options
    (``--batch-size``), so one check serves the library and the ``boundflow`` command."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render(lambda name: name))

    @staticmethod
    def literal(value) -> str:
        """``value`` as text for a template: braces doubled, shown as they are (a path with ``{``)."""
        return str(value).replace("{", "{{").replace("}", "}}")

    def render(self, name) -> str:
        """The message with each ``{field}`` shown as ``name(field)`` (``{{``/``}}``: one brace)."""
        return re.sub(
            r"\{\{|\}\}|\{(\w+)\}", lambda m: name(m.group(1)) if m.group(1) else m.group(0)[0], self.template
        )

    def as_options(self) -> str:
        """The message with each field shown as its command-line option (``n_clouds`` -> ``--n-clouds``)."""
        return self.render(lambda name: "--" + name.replace("_", "-"))


def where_called() -> str:
    """Describe where the current op was called from: the chain of ``nn.Module`` classes whose
    ``forward`` is on the stack and the innermost source line outside torch and BoundFlow."""
    modules: list[str] = []
    user_line = None
    frame = inspect.currentframe()
    try:
        f = frame.f_back if frame is not None else None
        while f is not None:
            filename = os.path.abspath(f.f_code.co_filename)
            in_lib = filename.startswith(_PKG_DIR) or f"{os.sep}torch{os.sep}" in filename
            if f.f_code.co_name == "forward":
                owner = f.f_locals.get("self")
                try:
                    import torch.nn as nn

                    if isinstance(owner, nn.Module):
                        modules.append(type(owner).__name__)
                except Exception:  # pragma: no cover - torch always importable here
                    pass
            if user_line is None and not in_lib and "<frozen" not in filename:
                user_line = f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"
            f = f.f_back
    finally:
        del frame
    parts = []
    if modules:
        parts.append("module " + " > ".join(reversed(modules)))
    if user_line:
        parts.append(user_line)
    return "; ".join(parts) if parts else "unknown location"
