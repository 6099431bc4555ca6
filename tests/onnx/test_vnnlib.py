"""VNN-LIB 2.0 beside 1.0: the same property in both versions, and what 2.0 allows that the
verifier refuses by name.  No data needed."""

from __future__ import annotations

import re

import pytest

from boundflow.onnx import VnnlibError, parse_vnnlib


def test_vnnlib_2_reads_as_the_same_property_written_in_1_0(tmp_path):
    """The same property in both versions gives the same disjuncts: tensor elements flattened
    row-major, linear terms, scaled input bounds (rounded outwards), ``==`` as two rows."""
    v1, v2 = tmp_path / "p1.vnnlib", tmp_path / "p2.vnnlib"
    v1.write_text(
        "".join(f"(declare-const X_{i} Real)\n" for i in range(6))
        + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        + "".join(f"(assert (>= X_{i} {-i}))\n(assert (<= X_{i} {i + 1}))\n" for i in range(6))
        + "(assert (or (and (<= Y_0 Y_1) (>= Y_0 0.25)) (<= Y_1 -2.5)))\n"
    )
    v2.write_text(
        "; VNN-LIB 2.0\n(vnnlib-version <2.0>)\n"
        '(declare-network f (declare-input X float32 [1, 2, 3] "input") (declare-output Y Real [2]))\n'
        + "".join(
            f"(assert (<= (* -1.0 X[0, {i // 3}, {i % 3}]) {i}))\n(assert (<= X [0, {i // 3}, {i % 3}] {i + 1}))\n"
            for i in range(6)
        )
        + "(assert (or (and (<= (- Y[0] Y[1]) 0) (>= (+ Y[0] 0.5) 0.75)) (== (* 2 Y[1]) -5)))\n"
    )
    d1, d2 = parse_vnnlib(v1), parse_vnnlib(v2)
    assert len(d1) == 2 and len(d2) == 2
    for a, b in zip(d1, d2, strict=True):
        assert a.lower.tolist() == b.lower.tolist() and a.upper.tolist() == b.upper.tolist()
    assert d2[0].C.tolist() == d1[0].C.tolist() and d2[0].d.tolist() == d1[0].d.tolist()
    # == gives two rows: 2 Y_1 <= -5 and 2 Y_1 >= -5
    assert d2[1].C.tolist() == [[0, 2], [0, -2]] and d2[1].d.tolist() == [-5, 5]
    # a bound by a coefficient that is not 1 is rounded outwards
    v2.write_text(
        "(vnnlib-version <2.0>)\n(declare-network f (declare-input X Real [1]) (declare-output Y Real [1]))\n"
        "(assert (<= (* 3 X[0]) 1))\n(assert (>= (* 3 X[0]) -1))\n(assert (<= Y[0] 0))\n"
    )
    (d,) = parse_vnnlib(v2)
    assert d.upper[0].item() >= 1 / 3 and d.lower[0].item() <= -1 / 3
    assert d.upper[0].item() - 1 / 3 < 1e-15


@pytest.mark.parametrize(
    "body, message",
    [
        (
            '(declare-network f (declare-input X Real [2]) (declare-hidden H Real [2] "h")'
            " (declare-output Y Real [1]))",
            "declare-hidden",
        ),
        (
            "(declare-network f (declare-input X Real [2]) (declare-output Y Real [1]))\n"
            "(declare-network g (equal-to f) (declare-input X2 Real [2]) (declare-output Y2 Real [1]))",
            "second network",
        ),
        (
            "(declare-network f (declare-input X Real [2]) (declare-input Z Real [2]) (declare-output Y Real [1]))",
            "second network input",
        ),
        (
            "(declare-network f (declare-input X Real [2]) (declare-output Y Real [1]))\n(assert (<= (+ X[0] X[1]) 1))",
            "several variables",
        ),
        ("(declare-network f (declare-input X Real [2]) (declare-output Y Real [1]))\n(assert (!= Y[0] 1))", "'!='"),
        (
            "(declare-network f (declare-input X Real [2]) (declare-output Y Real [1]))\n(assert (<= X[2] 1))",
            "out of the shape",
        ),
        (
            "(declare-network f (declare-input X Real [2]) (declare-output Y Real [1]))\n(assert (<= (* Y[0] Y[0]) 1))",
            "product of two variables",
        ),
    ],
)
def test_vnnlib_2_refuses_what_it_does_not_support_by_name(tmp_path, body, message):
    v = tmp_path / "p.vnnlib"
    v.write_text("(vnnlib-version <2.0>)\n" + body + "\n")
    with pytest.raises(VnnlibError, match=re.escape(message)):
        parse_vnnlib(v)
    v.write_text("(vnnlib-version <3.0>)\n")
    with pytest.raises(VnnlibError, match="version"):
        parse_vnnlib(v)


@pytest.mark.parametrize("lo, hi", [(0.25, 0.2500001), (-1e-44, 1e-44), (-0.5000001, -0.5), (1.0, 1.0), (0.1, 0.1)])
def test_exhaustive_check_lists_every_float32_of_a_box(lo, hi):
    """The ground-truth script of ``benchmarks/exhaustive_float32.py`` lists exactly the float32
    numbers in ``[lo, hi]`` (stepping by ``nextafter``), or the nearest one when none is inside."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "exhaustive_float32.py"
    spec = importlib.util.spec_from_file_location("exhaustive_float32", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    got = mod.float32_points(lo, hi)
    want = []
    x = np.float32(lo)
    if float(x) < lo:
        x = np.nextafter(x, np.float32(np.inf))
    while float(x) <= hi:
        want.append(x)
        x = np.nextafter(x, np.float32(np.inf))
    if not want:
        want = [np.float32(lo)]
    assert [float(v) for v in got] == [float(v) for v in want]


def test_constant_arithmetic_is_exact_and_rounded_outwards(tmp_path):
    """Constants combined inside a term are summed exactly and rounded so that the input box and
    the unsafe output set only grow (``0.3 - 0.1`` is not a double)."""
    from fractions import Fraction

    v = tmp_path / "p.vnnlib"
    v.write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
        "(assert (<= (+ X_0 0.1) 0.3))\n(assert (>= (- X_0 0.1) -0.3))\n(assert (<= (+ Y_0 0.1) 0.3))\n"
    )
    (d,) = parse_vnnlib(v)
    exact = Fraction(0.3) - Fraction(0.1)
    assert Fraction(d.upper[0].item()) >= exact and Fraction(d.lower[0].item()) <= -exact
    assert Fraction(d.d[0].item()) >= exact
    assert d.upper[0].item() - float(exact) < 1e-15


def test_plain_input_bounds_read_fast_equal_the_exact_reading(tmp_path):
    """``X_i <= v`` / ``v <= X_i`` with ``v`` a double take the fast path (no rational
    arithmetic); it gives the same box as the exact reading of the same bounds written so that
    they need it (``(+ X_i 0)``), strict bounds widened, a tighter second bound kept, and a
    constant that is not a double (``(+ 0.1 0.2)``) still rounded outwards."""
    from fractions import Fraction

    plain = (
        "(assert (<= X_0 0.1))\n(assert (>= X_0 -0.5))\n(assert (< X_1 2.5e-320))\n(assert (> X_1 -1e300))\n"
        "(assert (<= X_1 3.0))\n(assert (>= 0.25 X_2))\n(assert (<= -1 X_2))\n(assert (<= X_2 0.5))\n"
    )
    head = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n"
    tail = "(assert (<= Y_0 0.0))\n"
    slow = re.sub(r"X_(\d)", r"(+ X_\1 0)", plain)
    (a,) = parse_vnnlib(_write(tmp_path / "a.vnnlib", head + plain + tail))
    (b,) = parse_vnnlib(_write(tmp_path / "b.vnnlib", head + slow + tail))
    assert a.lower.tolist() == b.lower.tolist() == [-0.5, -1e300, -1.0]
    assert a.upper.tolist() == b.upper.tolist() == [0.1, 2.5e-320, 0.25]
    (c,) = parse_vnnlib(_write(tmp_path / "c.vnnlib", head + "(assert (<= X_0 (+ 0.1 0.2)))\n"
                               "(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n"
                               "(assert (<= X_2 1))\n(assert (>= X_2 0))\n" + tail))  # fmt: skip
    exact = Fraction(0.1) + Fraction(0.2)
    assert Fraction(c.upper[0].item()) >= exact > Fraction(c.upper[0].item()) - Fraction(1e-16)


def _write(path, text):
    path.write_text(text)
    return path
