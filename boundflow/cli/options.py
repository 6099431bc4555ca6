"""Option definitions shared by the subcommands: one name, one meaning and one help text per
concept, wherever it appears.

Vocabulary: counts are ``--n-*`` (``--n-samples``, ``--n-points``, ``--n-clouds``,
``--n-inputs``); a radius is ``--eps`` (``--epsilon`` accepted); ``--timeout`` is the wall-clock
budget of a whole answer, ``--time-limit`` the budget of one solver call; ``--method`` picks one
bounding method and ``--methods`` a comma-separated list, named as :func:`boundflow.compute_bounds`
names them (``ibp``, ``crown``, ...; ``interval`` is accepted for ``ibp``).  Options renamed to
fit are still accepted under their old name, with a one-line note on stderr."""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "eps",
    "seed",
    "out",
    "no_progress",
    "parallel",
    "time_limit",
    "count",
    "renamed",
    "floats",
]


def eps(p: argparse.ArgumentParser, default, help: str, **kw) -> None:
    """``--eps`` (alias ``--epsilon``): an l-infinity radius, or a comma-separated list of them."""
    p.add_argument("--eps", "--epsilon", dest="eps", default=default, help=help, **kw)


def seed(p: argparse.ArgumentParser, help: str = "random seed (data, initialisation)") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def out(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """``--out``: the folder (or file) the results go to."""
    p.add_argument("--out", default=default, help=help)


def no_progress(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    p.add_argument("--no-progress", action="store_true", help=help)


def parallel(p: argparse.ArgumentParser, what: str, executors: tuple[str, ...] = ("process", "ray")) -> None:
    """``--workers``, ``--executor``, ``--address``: where ``what`` runs in parallel."""
    p.add_argument("--workers", type=int, default=1, help=f"worker processes for {what} (default: 1, serial)")
    p.add_argument("--executor", default="process", choices=list(executors), help="where the workers run")
    p.add_argument("--address", default=None, help="Ray cluster address for --executor ray (default: a local Ray)")


def time_limit(p: argparse.ArgumentParser, default: float | None, help: str = "seconds per solver call") -> None:
    """``--time-limit``: one solver call's budget (a stopped call keeps its proven bound)."""
    p.add_argument("--time-limit", type=float, default=default, help=help)


def count(p: argparse.ArgumentParser, name: str, default: int | None, help: str, old: str | None = None) -> None:
    """``--n-<name>``: how many of something; ``old`` is a former spelling still accepted."""
    p.add_argument(f"--n-{name}", type=int, default=default, help=help)
    if old:
        renamed(p, old, f"--n-{name}", type=int)


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"boundflow: note: {option_string} is now {self.help_new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed(p: argparse.ArgumentParser, old: str, new: str, **kw) -> None:
    """Accept ``old`` as a hidden alias of the option ``new`` (a note on stderr says so)."""
    dest = new.lstrip("-").replace("-", "_")
    action = p.add_argument(old, dest=dest, action=_Renamed, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)
    action.help_new = new


def floats(text: str, what: str) -> list[float]:
    """``"0.01,0.03"`` -> ``[0.01, 0.03]``; a non-number or a negative value exits with a one-line
    error naming ``what``."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} {text!r}: expected comma-separated numbers") from None
    if not vals or any(v < 0 for v in vals):
        raise SystemExit(f"error: {what} {text!r}: expected non-negative numbers")
    return vals
