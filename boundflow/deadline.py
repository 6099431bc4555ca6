"""Deadlines that travel with a computation: :func:`within` sets one for the code it wraps (a
``time.monotonic()`` reading, per thread), and the long loops of the bound domains call
:func:`check`, which raises :class:`DeadlineExceeded` once it has passed.  So a bound call on a
large network stops within one loop step of the deadline instead of running for minutes; the
caller (the verifier) answers ``timeout``.  Outside :func:`within`, :func:`check` costs one
attribute read and never raises."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from boundflow.errors import BoundFlowError

__all__ = ["DeadlineExceeded", "within", "check", "current"]

_local = threading.local()


class DeadlineExceeded(BoundFlowError, TimeoutError):
    """The deadline set by :func:`within` passed during the computation."""


def current() -> float | None:
    """The innermost deadline of this thread (``time.monotonic()`` seconds), or ``None``."""
    return getattr(_local, "deadline", None)


@contextmanager
def within(deadline: float | None):
    """Run the body with ``deadline`` (``None``: none); nested scopes keep the earlier one."""
    prev = current()
    _local.deadline = deadline if prev is None else (prev if deadline is None else min(prev, deadline))
    try:
        yield
    finally:
        _local.deadline = prev


def check(what: str = "bounds") -> None:
    """Raise :class:`DeadlineExceeded` if this thread's deadline has passed."""
    d = getattr(_local, "deadline", None)
    if d is not None and time.monotonic() > d:
        raise DeadlineExceeded(f"deadline passed during {what}")
