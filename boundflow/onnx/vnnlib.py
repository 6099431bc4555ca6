"""VNN-LIB properties → a list of disjuncts ``(input box, C, d)``: the unsafe set is the union
over disjuncts of ``{x in box : C @ f(x) <= d}`` (every row).  Malformed files raise
:class:`VnnlibError` with the line number."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from boundflow.errors import BoundFlowError

__all__ = ["Disjunct", "VnnlibError", "parse_vnnlib"]


class VnnlibError(BoundFlowError, ValueError):
    """A malformed or unsupported VNN-LIB file (the message names the line)."""


@dataclass
class Disjunct:
    """``{x in [lower, upper] : C f(x) <= d}`` row by row; rows with ``strict`` need ``<``."""

    lower: torch.Tensor  # (n_in,)
    upper: torch.Tensor
    C: torch.Tensor  # (rows, n_out)
    d: torch.Tensor  # (rows,)
    strict: torch.Tensor | None = None  # (rows,) bool: the row was written with < or >

    def __post_init__(self):
        if self.strict is None:
            self.strict = torch.zeros(len(self.d), dtype=torch.bool)

    def unsafe(self, y) -> bool:
        """Whether output ``y`` (one sample, flat) satisfies every unsafe constraint as written."""
        import numpy as np

        m = self.C.numpy() @ np.asarray(y, dtype=np.float64).reshape(-1) - self.d.numpy()
        s = self.strict.numpy()
        return bool(np.all(np.where(s, m < 0, m <= 0)))


def read_text(path: Path) -> str:
    """The text of a ``.vnnlib`` or gzipped ``.vnnlib.gz`` file."""
    import gzip

    data = path.read_bytes()
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except OSError as e:
            raise VnnlibError(f"{path}: not a valid gzip file ({e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VnnlibError(f"{path}: not a UTF-8 text file (byte {e.start})") from None


_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


def _tokens(text: str):
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split(";", 1)[0]
        for m in _TOKEN.finditer(line):
            yield m.group(0), lineno


def _parse(tokens, path):
    stack: list[list] = []
    out: list = []
    for tok, line in tokens:
        if tok == "(":
            stack.append([("(", line)])
        elif tok == ")":
            if not stack:
                raise VnnlibError(f"{path}:{line}: unbalanced ')'")
            expr = stack.pop()
            (stack[-1] if stack else out).append(expr)
        else:
            (stack[-1] if stack else out).append((tok, line))
    if stack:
        raise VnnlibError(f"{path}:{stack[-1][0][1]}: unclosed '('")
    return out


def _head(expr):
    return expr[1][0] if len(expr) > 1 and isinstance(expr[1], tuple) else None


def _line(expr) -> int:
    return expr[0][1] if isinstance(expr, list) else expr[1]


def _term(t, path):
    """A variable ('X', i) / ('Y', i) or a float."""
    if isinstance(t, list):
        raise VnnlibError(f"{path}:{_line(t)}: only variables and numbers are supported as terms, got an expression")
    tok, line = t
    m = _VAR.match(tok)
    if m:
        return (m.group(1), int(m.group(2)))
    try:
        return float(tok)
    except ValueError:
        raise VnnlibError(f"{path}:{line}: unknown term {tok!r}") from None


def _dnf(expr, path) -> list[list]:
    """Formula → list of conjunctions (lists of atoms ``(op, lhs, rhs, line)``)."""
    h = _head(expr)
    if h == "and":
        parts = [_dnf(e, path) for e in expr[2:]]
        return [sum(combo, []) for combo in itertools.product(*parts)]
    if h == "or":
        return [c for e in expr[2:] for c in _dnf(e, path)]
    if h in ("<=", ">=", "<", ">"):
        if len(expr) != 4:
            raise VnnlibError(f"{path}:{_line(expr)}: '{h}' takes two terms")
        return [[(h, _term(expr[2], path), _term(expr[3], path), _line(expr))]]
    raise VnnlibError(f"{path}:{_line(expr)}: unsupported formula head {h!r}")


def parse_vnnlib(path: str | Path, n_inputs: int | None = None, n_outputs: int | None = None) -> list[Disjunct]:
    """Parse a VNN-LIB file into disjuncts (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise VnnlibError(f"{path}: no VNN-LIB file there")
    exprs = _parse(_tokens(read_text(path)), path)
    nx = ny = 0
    conj: list[list] = [[]]
    for e in exprs:
        if not isinstance(e, list):
            raise VnnlibError(f"{path}:{e[1]}: unexpected token {e[0]!r} outside an expression")
        h = _head(e)
        if h == "declare-const":
            m = _VAR.match(e[2][0]) if len(e) > 2 and isinstance(e[2], tuple) else None
            if not m:
                raise VnnlibError(f"{path}:{_line(e)}: declare-const needs a name X_i or Y_j")
            if m.group(1) == "X":
                nx = max(nx, int(m.group(2)) + 1)
            else:
                ny = max(ny, int(m.group(2)) + 1)
        elif h == "assert":
            if len(e) != 3:
                raise VnnlibError(f"{path}:{_line(e)}: assert takes one formula")
            d = _dnf(e[2], path)
            conj = [a + b for a in conj for b in d]
        else:
            raise VnnlibError(f"{path}:{_line(e)}: unsupported command {h!r}")
    declared_x, declared_y = nx, ny
    nx = n_inputs or nx
    ny = n_outputs or ny
    if nx == 0:
        raise VnnlibError(f"{path}: no input variables X_i declared")
    if n_outputs is not None and declared_y > n_outputs:
        raise VnnlibError(f"{path}: declares Y_{declared_y - 1}, but the model has {n_outputs} outputs")
    out = []
    for atoms in conj:
        lo = torch.full((nx,), -float("inf"), dtype=torch.float64)
        hi = torch.full((nx,), float("inf"), dtype=torch.float64)
        rows, rhs, strict = [], [], []
        for op, a, b, line in atoms:
            if op in (">=", ">"):
                a, b = b, a  # a <= b
            for t in (a, b):
                if isinstance(t, tuple) and t[1] >= (declared_x if t[0] == "X" else declared_y):
                    raise VnnlibError(f"{path}:{line}: {t[0]}_{t[1]} is used but not declared")
            ax, bx = isinstance(a, tuple) and a[0] == "X", isinstance(b, tuple) and b[0] == "X"
            if ax or bx:
                # a strict input bound is widened to <=: the box is closed, which only adds
                # boundary points to the proof's obligations (a witness is still checked as written)
                if ax and isinstance(b, float):
                    hi[a[1]] = min(hi[a[1]].item(), b)
                elif bx and isinstance(a, float):
                    lo[b[1]] = max(lo[b[1]].item(), a)
                else:
                    raise VnnlibError(f"{path}:{line}: only bounds 'X_i <= c' / 'X_i >= c' are supported on inputs")
                continue
            row = torch.zeros(ny, dtype=torch.float64)
            c = 0.0
            for term, sign in ((a, 1.0), (b, -1.0)):
                if isinstance(term, float):
                    c -= sign * term
                else:
                    if term[1] >= ny:
                        raise VnnlibError(f"{path}:{line}: Y_{term[1]} is not declared")
                    row[term[1]] += sign
            rows.append(row)
            rhs.append(c)
            strict.append(op in ("<", ">"))
        if torch.isinf(lo).any() or torch.isinf(hi).any():
            missing = torch.nonzero(torch.isinf(lo) | torch.isinf(hi)).reshape(-1).tolist()
            raise VnnlibError(f"{path}: input variables {missing[:5]} have no lower or upper bound in a disjunct")
        if (lo > hi).any():
            bad = torch.nonzero(lo > hi).reshape(-1).tolist()
            raise VnnlibError(
                f"{path}: input X_{bad[0]} has lower bound {lo[bad[0]].item():g} > upper bound {hi[bad[0]].item():g} "
                f"({len(bad)} such inputs): an empty input set is a malformed property, not a proof"
            )
        C = torch.stack(rows) if rows else torch.zeros(0, ny, dtype=torch.float64)
        out.append(Disjunct(lo, hi, C, torch.tensor(rhs, dtype=torch.float64), torch.tensor(strict, dtype=torch.bool)))
    return out
