"""The competition's tool interface (``vnncomp_scripts/``) called the way the VNN-COMP harness
calls it: ``prepare_instance.sh v1 CATEGORY ONNX VNNLIB`` then ``run_instance.sh v1 CATEGORY ONNX
VNNLIB RESULT TIMEOUT``, on a network and properties made here (no data needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "vnncomp_scripts"


def _net(path: Path) -> None:
    """y = relu(x0 - x1) + 0.5 on x in [0, 1]^2: y >= 0.5 everywhere, y = 1.5 at (1, 0)."""
    w = numpy_helper.from_array(np.array([[1.0], [-1.0]], dtype=np.float32), "w")
    b = numpy_helper.from_array(np.array([0.5], dtype=np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Add", ["r", "b"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [w, b],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def _prop(path: Path, unsafe: str) -> None:
    path.write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
        "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
        f"(assert {unsafe})\n"
    )


def _run(*args, timeout=120):
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(sys.platform != "linux", reason="the competition's scripts are bash on Linux")
def test_prepare_and_run_instance_as_the_harness_calls_them(tmp_path):
    _net(tmp_path / "net.onnx")
    _prop(tmp_path / "unsat.vnnlib", "(<= Y_0 0.4)")
    _prop(tmp_path / "sat.vnnlib", "(>= Y_0 1.2)")
    p = _run(SCRIPTS / "prepare_instance.sh", "v1", "test", tmp_path / "net.onnx", tmp_path / "unsat.vnnlib")
    assert p.returncode == 0, p.stderr
    for prop, want in (("unsat", "unsat"), ("sat", "sat")):
        result = tmp_path / f"{prop}.txt"
        t0 = time.monotonic()
        r = _run(
            SCRIPTS / "run_instance.sh", "v1", "test", tmp_path / "net.onnx", tmp_path / f"{prop}.vnnlib", result, 30
        )
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 30 + 2
        text = result.read_text()
        assert text.split("\n", 1)[0] == want, text
        if want == "sat":  # the witness: X_0, X_1 in the box, Y_0 >= 1.2
            vals = dict(line.strip("()").split() for line in text.splitlines()[2:-1])
            assert 0 <= float(vals["X_0"]) <= 1 and 0 <= float(vals["X_1"]) <= 1 and float(vals["Y_0"]) >= 1.2


def test_prepare_instance_refuses_a_missing_network_with_a_one_line_reason(tmp_path):
    _prop(tmp_path / "p.vnnlib", "(<= Y_0 0.4)")
    p = _run(SCRIPTS / "prepare_instance.sh", "v1", "test", tmp_path / "none.onnx", tmp_path / "p.vnnlib")
    assert p.returncode != 0 and "none.onnx" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_scripts_refuse_a_wrong_version_string(tmp_path):
    for script in ("install_tool.sh", "prepare_instance.sh", "run_instance.sh"):
        p = _run(SCRIPTS / script, "v2")
        assert p.returncode != 0 and p.stderr.strip()
