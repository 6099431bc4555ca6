"""VNN-LIB properties → a list of disjuncts ``(input box, C, d)``: the unsafe set is the union
over disjuncts of ``{x in box : C @ f(x) <= d}`` (every row).  Malformed files raise
:class:`VnnlibError` with the line number.

Both versions are read: 1.0 (``declare-const X_i`` / ``Y_j``) and 2.x (``(vnnlib-version <2.0>)``,
one ``declare-network`` with one ``declare-input`` and one ``declare-output`` tensor of any
shape, elements ``NAME[i, j, ...]`` flattened in row-major order).  Terms are linear: numbers,
variables, ``+``, ``-``, ``*`` by constants; ``==`` is two inequalities.  Constraints on inputs
must bound a single input (a box); constraints over several inputs, ``!=``, hidden nodes and
properties over several networks are refused by name."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from fractions import Fraction
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
_TENSOR_VAR = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\[([\d,\s]*)\]$")
# VNN-LIB 2.0 writes tensor elements and shapes with brackets, spaces allowed inside: one token
_BRACKETS = re.compile(r"\s*\[([^\]]*)\]")


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


def _term(t, path, names=None):
    """A linear expression ``({variable: coefficient}, constant)``; a variable is ``('X', i)`` or
    ``('Y', j)``.  Terms: numbers, ``X_i``/``Y_j`` (VNN-LIB 1.0), ``NAME[i, ...]`` of a declared
    tensor (2.0; ``names``: name -> (kind, shape)), and ``(+ ...)``, ``(- a)``, ``(- a b ...)``,
    ``(* ...)`` with at most one non-constant factor."""
    if isinstance(t, list):
        h = _head(t)
        args = [_term(a, path, names) for a in t[2:]]
        if h == "+" and args:
            return _lin_sum(args, [1] * len(args))
        if h == "-" and len(args) == 1:
            return _lin_sum(args, [-1])
        if h == "-" and len(args) > 1:
            return _lin_sum(args, [1] + [-1] * (len(args) - 1))
        if h == "*" and args:
            coef, var = Fraction(1), None
            for a in args:
                if a[0]:
                    if var is not None:
                        raise VnnlibError(f"{path}:{_line(t)}: a product of two variables is not a linear constraint")
                    var = a
                else:
                    coef *= a[1]
            if var is None:
                return {}, coef
            return {k: coef * v for k, v in var[0].items()}, coef * var[1]
        raise VnnlibError(f"{path}:{_line(t)}: unsupported term {h!r} (numbers, variables, +, -, * only)")
    tok, line = t
    m = _VAR.match(tok)
    if m:
        return {(m.group(1), int(m.group(2))): Fraction(1)}, Fraction(0)
    m = _TENSOR_VAR.match(tok)
    if m and names is not None:
        name, idx = m.group(1), [int(i) for i in m.group(2).split(",") if i.strip()]
        if name not in names:
            raise VnnlibError(f"{path}:{line}: {name} is not declared")
        kind, shape = names[name]
        if len(idx) != len(shape) or any(not 0 <= i < n for i, n in zip(idx, shape, strict=False)):
            raise VnnlibError(f"{path}:{line}: index {idx} is out of the shape {list(shape)} of {name}")
        flat = 0
        for i, n in zip(idx, shape, strict=True):
            flat = flat * n + i
        return {(kind, flat): Fraction(1)}, Fraction(0)
    if names is not None and tok in names and not names[tok][1]:
        return {(names[tok][0], 0): Fraction(1)}, Fraction(0)  # a scalar tensor
    try:
        value = float(tok)
    except ValueError:
        raise VnnlibError(f"{path}:{line}: unknown term {tok!r}") from None
    if not math.isfinite(value):
        raise VnnlibError(f"{path}:{line}: {tok!r} is not a finite number")
    return {}, Fraction(value)  # the number is the double nearest the token; arithmetic is exact


def _to_float(q: Fraction, up: bool) -> float:
    """The double nearest ``q``, moved one step up (``up``) or down if it lies on the wrong side."""
    f = float(q)
    if up and Fraction(f) < q:
        return math.nextafter(f, math.inf)
    if not up and Fraction(f) > q:
        return math.nextafter(f, -math.inf)
    return f


def _single_input_bound(a, b) -> tuple[int, bool, float] | None:
    """``a <= b`` as ``(i, upper, value)`` when it reads ``X_i <= v`` (``upper``) or ``v <= X_i``
    with ``v`` a double: the common case, without rational arithmetic; else ``None``."""
    (ca, ka), (cb, kb) = a, b
    for var, other, k_var, k_num, upper in ((ca, cb, ka, kb, True), (cb, ca, kb, ka, False)):
        if len(var) == 1 and not other and k_var == 0:
            ((kind, i), coef) = next(iter(var.items()))
            value = float(k_num)
            if kind == "X" and coef == 1 and Fraction(value) == k_num:
                return i, upper, value
    return None


def _lin_sum(args, signs):
    out: dict = {}
    const = Fraction(0)
    for (coefs, c), s in zip(args, signs, strict=True):
        for k, v in coefs.items():
            out[k] = out.get(k, Fraction(0)) + s * v
        const += s * c
    return out, const


def _dnf(expr, path, names=None) -> list[list]:
    """Formula → list of conjunctions (lists of atoms ``(op, lhs, rhs, line)``)."""
    h = _head(expr)
    if h == "and":
        parts = [_dnf(e, path, names) for e in expr[2:]]
        return [sum(combo, []) for combo in itertools.product(*parts)]
    if h == "or":
        return [c for e in expr[2:] for c in _dnf(e, path, names)]
    if h in ("<=", ">=", "<", ">", "=="):
        if len(expr) != 4:
            raise VnnlibError(f"{path}:{_line(expr)}: '{h}' takes two terms")
        a, b = _term(expr[2], path, names), _term(expr[3], path, names)
        if h == "==":
            return [[("<=", a, b, _line(expr)), (">=", a, b, _line(expr))]]
        return [[(h, a, b, _line(expr))]]
    if h == "!=":
        raise VnnlibError(f"{path}:{_line(expr)}: '!=' (a union of two open half-spaces) is not supported")
    raise VnnlibError(f"{path}:{_line(expr)}: unsupported formula head {h!r}")


def _declare_network(e, path, names: dict) -> None:
    """Read a VNN-LIB 2.0 ``(declare-network NAME (declare-input ...) ... (declare-output ...))``
    into ``names`` (tensor name -> ``('X' | 'Y', shape)``); one input and one output tensor."""
    for part in e[3:]:
        if not isinstance(part, list):
            raise VnnlibError(f"{path}:{_line(part)}: unexpected {part[0]!r} in declare-network")
        h = _head(part)
        if h in ("isomorphic-to", "equal-to"):
            raise VnnlibError(f"{path}:{_line(part)}: '{h}' (properties over several networks) is not supported")
        if h == "declare-hidden":
            raise VnnlibError(f"{path}:{_line(part)}: declare-hidden (constraints on hidden nodes) is not supported")
        if h not in ("declare-input", "declare-output"):
            raise VnnlibError(f"{path}:{_line(part)}: unsupported declaration {h!r} in declare-network")
        # after the bracket normalisation the element type and the shape are one token: Real[1,3]
        m = None
        if len(part) >= 4 and isinstance(part[2], tuple) and isinstance(part[3], tuple):
            m = re.match(r"^([A-Za-z][A-Za-z0-9_]*)\[([\d,]*)\]$", part[3][0])
        if not m:
            raise VnnlibError(f"{path}:{_line(part)}: '{h}' needs a name, an element type and a shape ([1, 3] or [])")
        name = part[2][0]
        shape = tuple(int(i) for i in m.group(2).split(",") if i.strip())
        kind = "X" if h == "declare-input" else "Y"
        if any(k == kind for k, _ in names.values()):
            raise VnnlibError(
                f"{path}:{_line(part)}: a second network {'input' if kind == 'X' else 'output'} "
                f"({name}) is not supported (one input and one output tensor)"
            )
        names[name] = (kind, shape)


def parse_vnnlib(path: str | Path, n_inputs: int | None = None, n_outputs: int | None = None) -> list[Disjunct]:
    """Parse a VNN-LIB file into disjuncts (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise VnnlibError(f"{path}: no VNN-LIB file there")
    text = read_text(path)
    names: dict | None = None  # VNN-LIB 2.0: tensor name -> (kind, shape)
    if "vnnlib-version" in text:
        text = _BRACKETS.sub(lambda m: "[" + m.group(1).replace(" ", "") + "]", text)
    exprs = _parse(_tokens(text), path)
    nx = ny = 0
    conj: list[list] = [[]]
    networks = 0
    for e in exprs:
        if not isinstance(e, list):
            raise VnnlibError(f"{path}:{e[1]}: unexpected token {e[0]!r} outside an expression")
        h = _head(e)
        if h == "vnnlib-version":
            version = e[2][0] if len(e) > 2 and isinstance(e[2], tuple) else ""
            if not re.match(r"^<2\.\d+>$", version):
                raise VnnlibError(f"{path}:{_line(e)}: VNN-LIB version {version!r} is not supported (1.0 and 2.x)")
            names = {}
        elif h == "declare-network":
            if names is None:
                raise VnnlibError(f"{path}:{_line(e)}: declare-network needs '(vnnlib-version <2.0>)' first")
            networks += 1
            if networks > 1:
                raise VnnlibError(f"{path}:{_line(e)}: a second network is not supported (one network per property)")
            _declare_network(e, path, names)
            for kind, shape in names.values():
                size = 1
                for n in shape:
                    size *= n
                if kind == "X":
                    nx = size
                else:
                    ny = size
        elif h == "declare-const":
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
            d = _dnf(e[2], path, names)
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
        lo_l, hi_l = [-math.inf] * nx, [math.inf] * nx
        rows, rhs, strict = [], [], []
        for op, a, b, line in atoms:
            if op in (">=", ">"):
                a, b = b, a  # a <= b
            fast = _single_input_bound(a, b)
            if fast is not None:  # X_i <= v or v <= X_i (a strict one widened, as below)
                i, upper, value = fast
                if i >= declared_x:
                    raise VnnlibError(f"{path}:{line}: X_{i} is used but not declared")
                if upper:
                    hi_l[i] = min(hi_l[i], value)
                else:
                    lo_l[i] = max(lo_l[i], value)
                continue
            # a - b <= 0 as {variable: coefficient} and a constant
            coefs, const = _lin_sum([a, b], [1, -1])
            coefs = {k: v for k, v in coefs.items() if v != 0}
            for kind, i in coefs:
                if i >= (declared_x if kind == "X" else declared_y):
                    raise VnnlibError(f"{path}:{line}: {kind}_{i} is used but not declared")
            xs = [k for k in coefs if k[0] == "X"]
            if xs:
                # a strict input bound is widened to <=: the box is closed, which only adds
                # boundary points to the proof's obligations (a witness is still checked as written)
                if len(coefs) != 1:
                    raise VnnlibError(
                        f"{path}:{line}: only bounds on single inputs ('X_i <= c', '(* -1 X[i]) <= c') are "
                        "supported; this constraint mixes several variables"
                    )
                (k, coef) = next(iter(coefs.items()))
                # exact rational bound, rounded outwards to a double (keeps every point)
                bound = _to_float(-const / coef, up=coef > 0)
                if coef > 0:
                    hi_l[k[1]] = min(hi_l[k[1]], bound)
                else:
                    lo_l[k[1]] = max(lo_l[k[1]], bound)
                continue
            row = torch.zeros(ny, dtype=torch.float64)
            for (_, j), v in coefs.items():
                if j >= ny:
                    raise VnnlibError(f"{path}:{line}: Y_{j} is not declared")
                row[j] += float(v)
            rows.append(row)
            rhs.append(_to_float(-const, up=True))  # rounded up: the unsafe set only grows
            strict.append(op in ("<", ">"))
        lo = torch.tensor(lo_l, dtype=torch.float64)
        hi = torch.tensor(hi_l, dtype=torch.float64)
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
