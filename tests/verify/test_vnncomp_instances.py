"""ONNX import (against onnxruntime), VNN-LIB parsing, and verification answers on shared
VNN-COMP instances with known results."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest
import torch

import boundflow as bf
from boundflow.cli import EXIT_SAT
from boundflow.demo import shared_vnncomp
from boundflow.onnx import OnnxImportError, VnnlibError, load_onnx, parse_vnnlib
from boundflow.verify import verify
from boundflow.verify.pipeline import _batchable, _Batched

# needs ../shared (the VNN-COMP instances next to the checkout, or $BOUNDFLOW_SHARED): every test
# here is marked `shared` and skips cleanly without it
ROOT = shared_vnncomp() or Path("../shared/benchmarks/vnncomp")
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not ROOT.exists(), reason="shared VNN-COMP instances not available (../shared)"),
]

NETWORKS = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.onnx")) if ROOT.exists() else []


@pytest.mark.parametrize("rel", NETWORKS)
def test_every_shared_network_matches_onnxruntime(rel):
    load_onnx(ROOT / rel, check=True, atol=1e-5)  # raises above 1e-5


def test_onnx_gz_loads(tmp_path):
    src = ROOT / "test" / "test_tiny.onnx"
    gz = tmp_path / "tiny.onnx.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    load_onnx(gz, check=True)


def _instances(folder):
    with open(ROOT / folder / "instances.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("row", _instances("test") if ROOT.exists() else [], ids=lambda r: r["onnx"])
def test_test_folder_answers(row):
    res = verify(ROOT / "test" / row["onnx"], ROOT / "test" / row["vnnlib"], timeout=60)
    assert res.status == row["expected"], res
    if res.status == "sat":
        # the witness is inside the input box and violates the property in onnxruntime
        dj = parse_vnnlib(ROOT / "test" / row["vnnlib"])[0]
        x = torch.as_tensor(res.counterexample, dtype=torch.float64)
        assert ((x >= dj.lower) & (x <= dj.upper)).all()
        y = torch.as_tensor(res.output, dtype=torch.float64)
        assert (dj.C @ y <= dj.d).all()
        assert res.vnncomp().startswith("sat\n(")


def _margin_bound(onnx, vnnlib, method):
    m = load_onnx(ROOT / "test" / onnx).double()
    f = _Batched(m, m.input_shape, _batchable(m, m.input_shape))
    dj = parse_vnnlib(ROOT / "test" / vnnlib)[0]
    lb, _ = bf.compute_bounds(f, dj.lower[None], dj.upper[None], method=method, C=dj.C)
    return (lb - dj.d).max().item()


def test_known_margins_on_test_unsat():
    """ACAS Xu 1_6 prop 3: best atom's lower bound -201.0 (interval), about +0.0042 (CROWN),
    +0.0054 (alpha-CROWN with optimised intermediate layers), +0.00585 exactly."""
    ibp = _margin_bound("test_unsat.onnx", "test_prop.vnnlib", "ibp")
    crown = _margin_bound("test_unsat.onnx", "test_prop.vnnlib", "crown")
    alpha = _margin_bound("test_unsat.onnx", "test_prop.vnnlib", "alpha-crown")
    assert ibp == pytest.approx(-201.0, abs=0.05)
    assert crown == pytest.approx(0.0042, abs=0.0002)
    assert crown <= alpha <= 0.00585


def test_test_small_is_linear_and_bounds_are_exact():
    m = load_onnx(ROOT / "test" / "test_small.onnx").double()
    f = _Batched(m, m.input_shape, _batchable(m, m.input_shape))
    lo, hi = bf.compute_bounds(f, torch.tensor([[-1.0]]), torch.tensor([[1.0]]), method="ibp")
    assert lo.item() == pytest.approx(30.5) and hi.item() == pytest.approx(78.5)


@pytest.mark.parametrize(
    "row",
    [r for r in _instances("acasxu") if r["expected"] == "sat"][:2] + [r for r in _instances("acasxu")][:2]
    if ROOT.exists()
    else [],
    ids=lambda r: f"{r['onnx']}-{r['vnnlib']}",
)
def test_acasxu_instances_never_wrong(row):
    res = verify(ROOT / "acasxu" / row["onnx"], ROOT / "acasxu" / row["vnnlib"], timeout=20)
    if row["expected"] == "sat":
        assert res.status != "unsat"
    else:
        assert res.status != "sat"


def test_relu_splitting_proves_a_wide_input_instance():
    """mnist_fc prop 9 at eps 0.05: CROWN alone cannot prove it; ReLU splitting does."""
    folder = ROOT / "mnist_fc"
    m = load_onnx(folder / "onnx" / "mnist-net_256x2.onnx").double()
    f = _Batched(m, m.input_shape, _batchable(m, m.input_shape))
    dj = parse_vnnlib(folder / "vnnlib" / "prop_9_0.05.vnnlib")[0]
    lb, _ = bf.compute_bounds(f, dj.lower[None], dj.upper[None], method="crown", C=dj.C)
    assert not ((lb - dj.d) > 0).any()
    res = verify(folder / "onnx" / "mnist-net_256x2.onnx", folder / "vnnlib" / "prop_9_0.05.vnnlib", timeout=100)
    assert res.status == "unsat"


@pytest.mark.parametrize("folder", ["acasxu", "mnist_fc", "rl_benchmarks", "test"])
def test_never_unsat_on_sat_instances(folder):
    """Every shared ``sat`` instance (100 of them): never ``unsat``; in CI (needs ../shared)."""
    rows = [r for r in _instances(folder) if r["expected"] == "sat"]
    assert rows
    answers = []
    for row in rows:
        res = verify(ROOT / folder / row["onnx"], ROOT / folder / row["vnnlib"], timeout=5)
        assert res.status != "unsat", row
        answers.append(res.status)
    assert answers.count("sat") >= len(rows) // 2, answers  # the falsifier finds most of them


def test_malformed_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(OnnxImportError, match="bad.onnx: not a valid ONNX model"):
        load_onnx(bad)
    v = tmp_path / "p.vnnlib"
    v.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0)\n")
    with pytest.raises(VnnlibError, match=r"p.vnnlib:3: unclosed"):
        parse_vnnlib(v)
    v.write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (>= X_0 0))\n"
        "(assert (foo Y_0 1))\n"
    )
    with pytest.raises(VnnlibError, match=r"p.vnnlib:5: unsupported formula head 'foo'"):
        parse_vnnlib(v)
    v.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (<= Y_0 zz))\n")
    with pytest.raises(VnnlibError, match=r"p.vnnlib:4: unknown term 'zz'"):
        parse_vnnlib(v)
    v.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1.0))\n")
    with pytest.raises(VnnlibError, match="no lower or upper bound"):
        parse_vnnlib(v)


def test_vnnlib_disjunction_and_mixed_constraints(tmp_path):
    v = tmp_path / "p.vnnlib"
    v.write_text(
        "; comment\n(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
        "(declare-const Y_1 Real)\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
        "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1)) (and (>= X_0 2) (<= X_0 3) (>= Y_0 0.5))))\n"
    )
    ds = parse_vnnlib(v)
    assert len(ds) == 2
    assert ds[0].lower.tolist() == [0, -1] and ds[1].upper.tolist() == [3, 1]
    assert ds[0].C.tolist() == [[1, -1]] and ds[0].d.tolist() == [0]
    assert ds[1].C.tolist() == [[-1, 0]] and ds[1].d.tolist() == [-0.5]


def test_verify_cli(tmp_path, capsys):
    from boundflow.cli import main

    out = tmp_path / "res.txt"
    assert (
        main(
            ["verify", str(ROOT / "test" / "test_sat.onnx"), str(ROOT / "test" / "test_prop.vnnlib"), "--out", str(out)]
        )
        == EXIT_SAT
    )
    assert out.read_text().startswith("sat")


def _roundtrip(nodes, inits, in_shape, out_name="y", opset=13):
    """Build an ONNX model, import it, compare with onnxruntime."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    data = model.SerializeToString()
    from boundflow.onnx import check_against_onnxruntime
    from boundflow.onnx.importer import OnnxModule

    return check_against_onnxruntime(OnnxModule(model).eval(), data, atol=1e-5)


def test_more_onnx_ops_match_onnxruntime():
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    # Slice + Gather + Concat + Pad + Cast + Shape/ConstantOfShape-free path
    _roundtrip(
        [
            helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
            helper.make_node("Gather", ["s", "idx"], ["g"], axis=1),
            helper.make_node("Pad", ["g", "pads"], ["p"], mode="constant"),
            helper.make_node("Cast", ["p"], ["c"], to=1),
            helper.make_node("Split", ["c"], ["a", "b"], axis=1),
            helper.make_node("Concat", ["b", "a"], ["y"], axis=1),
        ],
        {"st": i64([1]), "en": i64([4]), "ax": i64([1]), "idx": i64([0, 2, 1, 1]), "pads": i64([0, 1, 0, 1])},
        [2, 5],
    )
    # ConvTranspose + Sigmoid + GlobalAveragePool + Flatten + Gemm
    _roundtrip(
        [
            helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["t"], ["s"]),
            helper.make_node("GlobalAveragePool", ["s"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "W", "c"], ["y"], transB=1),
        ],
        {"w": f32(2, 3, 3, 3), "b": f32(3), "W": f32(4, 3), "c": f32(4)},
        [1, 2, 5, 5],
    )
    # Shape + ConstantOfShape feeding an Add
    _roundtrip(
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("ConstantOfShape", ["sh"], ["z"], value=helper.make_tensor("v", 1, [1], [0.5])),
            helper.make_node("Add", ["x", "z"], ["y"]),
        ],
        {},
        [2, 3],
    )
