"""Exceptions raised by BoundFlow, and helpers that make their messages point at user code."""

from __future__ import annotations

import inspect
import os

__all__ = ["BoundFlowError", "UnsupportedOperation", "IntervalOpError", "DomainError", "where_called"]

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
