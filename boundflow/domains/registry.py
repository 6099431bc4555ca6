"""The one place method names are read: ``"crown"``, ``"interval"`` (another name for ``"ibp"``),
and names with options, ``"crown:maxpool=tight"``, ``"alpha-crown:iters=50:lr=0.2"``,
``"milp:time_limit=10"``.  Every job (``compute_bounds``, the verifier's bounders, point
clouds, the tightness benchmark, the command line's method lists) turns a name into a domain
here.

A plain name gives the registered, shared domain instance; a name with options gives a new
instance configured by them.  Each option is checked (its name, and its value's type and range)
with a one-line ``ValueError`` naming the method and the option, before any work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from boundflow.domains.base import Domain

__all__ = [
    "DOMAINS",
    "METHOD_ALIASES",
    "METHOD_OPTIONS",
    "NAMED_METHODS",
    "canonical_method",
    "get_domain",
    "method_names",
    "parse_method",
    "register_domain",
]

DOMAINS: dict[str, Domain] = {}
# registered on first use, so that importing boundflow does not import the solver stack
_LAZY = {m: "boundflow.encode.network" for m in ("lp", "milp", "mibp", "sdp")}

METHOD_ALIASES = {"interval": "ibp"}
"""Other names of methods: ``interval`` is ``ibp``."""

NAMED_METHODS = {"crown-tight": "crown:maxpool=tight"}
"""Names of methods with options, kept as row names (the tightness benchmark's ``crown-tight``:
CROWN with the pivot-difference max-pool line)."""


@dataclass(frozen=True)
class _Option:
    """One option of a method: its keyword argument of the domain's constructor and its parser."""

    keyword: str
    parse: Callable[[str], object]
    help: str


def _choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"choose from {', '.join(names)}")
        return text

    return parse


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError("true or false")
    return text.lower() in ("true", "1")


def _sides(text: str) -> tuple[str, ...]:
    side = _choice("lower", "upper", "both")(text)
    return ("lower", "upper") if side == "both" else (side,)


_SOLVER = {"time_limit": _Option("time_limit", _positive, "seconds per solve")}
METHOD_OPTIONS: dict[str, dict[str, _Option]] = {
    "ibp": {},
    "crown": {
        "maxpool": _Option("maxpool", _choice("deeppoly", "tight"), "max-pool relaxation"),
        "sparse": _Option("sparse", _flag, "CROWN bounds only for ReLU inputs of open sign"),
    },
    "alpha-crown": {
        "iters": _Option("iterations", _count, "slope-optimisation iterations"),
        "lr": _Option("lr", _positive, "step size of the slopes"),
        "sides": _Option("sides", _sides, "which bounds to optimise: lower, upper or both"),
        "intermediate": _Option("intermediate", _count, "iterations on every ReLU input's bounds first"),
        "share": _Option("intermediate_share", _share, "share of the time left that those iterations may take"),
    },
    "forward": {"maxpool": _Option("maxpool", _choice("deeppoly", "tight"), "max-pool relaxation")},
    **{m: _SOLVER for m in _LAZY},
}
"""Per method: option name -> its keyword of the domain's constructor, its parser and meaning."""


def register_domain(domain: Domain) -> Domain:
    """Make ``domain`` the shared instance behind its ``name``."""
    DOMAINS[domain.name] = domain
    return domain


def canonical_method(method: str) -> str:
    """The registered name of ``method`` (``"interval"`` is another name for ``"ibp"``)."""
    return METHOD_ALIASES.get(method, method)


def _known() -> list[str]:
    return sorted(set(DOMAINS) | set(_LAZY))


def _shared(name: str) -> Domain:
    if name in DOMAINS:
        return DOMAINS[name]
    if name in _LAZY:
        import importlib

        return register_domain(importlib.import_module(_LAZY[name]).SolverDomain(name))
    raise ValueError(f"unknown method {name!r}; available: {', '.join(_known())}")


def parse_method(text: str) -> Domain:
    """The domain ``text`` names: ``name`` or ``name:option=value[:option=value...]`` (see
    :data:`METHOD_OPTIONS`).  ``ValueError`` (one line, naming the method and the option) for an
    unknown name or option or a bad value."""
    text = NAMED_METHODS.get(text.strip(), canonical_method(text.strip()))
    name, *parts = text.split(":")
    name = canonical_method(name.strip())
    domain = _shared(name)
    if not parts:
        return domain
    known = METHOD_OPTIONS.get(name, {})
    kwargs = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in known:
            avail = ", ".join(known) or "none"
            raise ValueError(f"method {text!r}: unknown option {key!r}; {name} takes: {avail}")
        if not sep or not value:
            raise ValueError(f"method {text!r}: option {key!r} needs a value ({key}=...)")
        if known[key].keyword in kwargs:
            raise ValueError(f"method {text!r}: option {key!r} given twice")
        try:
            kwargs[known[key].keyword] = known[key].parse(value)
        except (ValueError, KeyError) as e:
            raise ValueError(f"method {text!r}: option {key}={value!r}: {e}") from None
    if name in _LAZY:
        return type(domain)(name, **kwargs)
    return type(domain)(**kwargs)


def get_domain(method: str | Domain) -> Domain:
    """The domain ``method`` names (see :func:`parse_method`); a domain instance (anything with
    ``prepare``) is returned as is, so configured domains (``ForwardDomain(maxpool="tight")``)
    plug in too."""
    if not isinstance(method, str) and callable(getattr(method, "prepare", None)):
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be a name or a domain, got {type(method).__name__}")
    return parse_method(method)


def method_names(text: str, known: tuple[str, ...], what: str = "methods") -> list[str]:
    """A comma-separated list of methods, aliases resolved (``interval`` -> ``ibp``), each a
    name in ``known`` with valid options (``crown:maxpool=tight``).  ``ValueError`` naming
    ``what`` and the first unknown name, before any work."""
    names = [canonical_method(m.strip()) for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError(f"{what}: no method in {text!r}; choose from {', '.join(known)}")
    for m in names:
        base = m.split(":")[0]
        if m not in known and base not in known:
            raise ValueError(f"{what}: unknown {m!r}; choose from {', '.join(known)}")
        parse_method(m)
    return names
