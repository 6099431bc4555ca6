"""The verifier on the tiny VNN-COMP folder kept in the repository (``tests/data/tiny_vnncomp``,
written by :mod:`tests.support.tiny_instances`): no ``../shared`` needed, so these never skip.
Each recorded answer is re-derived by exact MILP from the committed files, each verdict compared
with it, and each ``sat`` counterexample re-checked in onnxruntime here."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from boundflow.cli import EXIT_SAT, EXIT_UNSAT, main
from boundflow.verify import verify
from boundflow.verify.vnncomp import read_instances, run_benchmark
from tests.support.tiny_instances import FOLDER, MARGIN, boxes, exact_min

INSTANCES = read_instances(FOLDER / "instances.csv")


def _threshold(vnnlib) -> float:
    """``a`` of the property's ``(>= Y_1 (+ Y_0 a))``: reachable iff min(Y_0 - Y_1) <= -a."""
    return float(re.search(r"\(>= Y_1 \(\+ Y_0 ([^()\s]+)\)\)", vnnlib.read_text()).group(1))


def test_the_folder_holds_both_answers_for_a_chain_and_a_general_graph():
    assert len(INSTANCES) == 4
    assert sorted(i.expected for i in INSTANCES) == ["sat", "sat", "unsat", "unsat"]
    assert {i.onnx.name for i in INSTANCES} == {"mlp.onnx", "cnn.onnx"}


@pytest.mark.parametrize("name", ["mlp.onnx", "cnn.onnx"])
def test_recorded_answers_are_the_exact_truth(name):
    lo, hi = boxes()[name]
    m = exact_min(FOLDER / name, lo, hi)
    for inst in (i for i in INSTANCES if i.onnx.name == name):
        reachable = m <= -_threshold(inst.vnnlib)
        assert inst.expected == ("sat" if reachable else "unsat")
        assert abs(m + _threshold(inst.vnnlib)) >= MARGIN / 2  # no answer at the edge


@pytest.mark.parametrize("index", range(4))
def test_verify_answers_each_instance_and_its_counterexample_holds(index, tmp_path):
    inst = INSTANCES[index]
    res = verify(inst.onnx, inst.vnnlib, timeout=30)
    assert res.status == inst.expected, res
    if res.status == "sat":
        lo, hi = boxes()[inst.onnx.name]
        x = np.asarray(res.counterexample, dtype=np.float32).reshape(1, *_input_shape(inst.onnx))
        assert (x.reshape(-1) >= lo - 1e-6).all() and (x.reshape(-1) <= hi + 1e-6).all()
        y = ort.InferenceSession(str(inst.onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert y[0, 1] >= y[0, 0] + _threshold(inst.vnnlib)
    code = main(["verify", str(inst.onnx), str(inst.vnnlib), "--timeout", "30", "--out", str(tmp_path / "r.txt")])
    assert code == (EXIT_SAT if inst.expected == "sat" else EXIT_UNSAT)
    assert (tmp_path / "r.txt").read_text().split("\n", 1)[0] == inst.expected


def test_vnncomp_folder_run_matches_every_answer(tmp_path):
    rows = run_benchmark(FOLDER / "instances.csv", tmp_path / "out", progress=False)
    assert [r["result"] for r in rows] == [i.expected for i in INSTANCES]


def _input_shape(onnx) -> list[int]:
    import onnx as onnx_lib

    dims = onnx_lib.load(str(onnx)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims][1:]
