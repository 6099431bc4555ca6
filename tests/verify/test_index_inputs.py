"""Models that read input elements as indices (a patch position cast to an integer that starts a
``Slice`` and indexes a ``ScatterND``, as in VNN-COMP's ``cctsdb_yolo``): import, pinning,
bounds case by case, and verdicts against the truth found by enumeration.  No data needed."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import boundflow as bf
from boundflow.errors import UnsupportedOperation
from boundflow.onnx import parse_vnnlib
from boundflow.onnx.importer import OnnxModule
from boundflow.verify.cases import _integer_parts, case_bounds, cases
from boundflow.verify.pipeline import _batched, verify_model

N_IMG, WIN = 8, 3


def _graph(value_use: bool = False) -> onnx.ModelProto:
    """``x`` (10,): ``img = x[:8]``, ``p = int(x[8])``, ``q = int(x[9])``;
    ``y = [relu(w * img[p:p+3] + b), sum(img * mask_q)]`` with ``mask_q`` 2 at ``q``, 0 elsewhere
    (``value_use``: ``x[8]`` is also added to the output as a value)."""
    c = lambda name, v, dt=np.float32: numpy_helper.from_array(np.asarray(v, dtype=dt), name)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "s0", "s8", "ax0"], ["img"]),
        helper.make_node("Gather", ["x", "i8"], ["pf"], axis=0),
        helper.make_node("Cast", ["pf"], ["p"], to=TensorProto.INT64),
        helper.make_node("Add", ["p", "win"], ["pe"]),
        helper.make_node("Slice", ["img", "p", "pe", "ax0"], ["window"]),
        helper.make_node("Mul", ["window", "w"], ["ww"]),
        helper.make_node("Add", ["ww", "b"], ["wb"]),
        helper.make_node("Relu", ["wb"], ["r"]),
        helper.make_node("Gather", ["x", "i9"], ["qf"], axis=0),
        helper.make_node("Cast", ["qf"], ["q"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["q", "ax_last"], ["qi"]),
        helper.make_node("ScatterND", ["zeros", "qi", "two"], ["mask"]),
        helper.make_node("Mul", ["img", "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "ax0"], ["s"], keepdims=1),
        helper.make_node("Concat", ["r", "s"], ["y0"], axis=0),
    ]
    if value_use:
        nodes += [helper.make_node("Add", ["y0", "pf"], ["y"])]
    else:
        nodes += [helper.make_node("Identity", ["y0"], ["y"])]
    inits = [
        c("s0", [0], np.int64),
        c("s8", [N_IMG], np.int64),
        c("ax0", [0], np.int64),
        c("ax_last", [-1], np.int64),
        c("i8", [8], np.int64),
        c("i9", [9], np.int64),
        c("win", [WIN], np.int64),
        c("w", [1.5, -2.0, 0.5]),
        c("b", [0.1, 0.2, -0.3]),
        c("zeros", np.zeros(N_IMG)),
        c("two", [2.0]),
    ]
    g = helper.make_graph(
        nodes,
        "index",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [WIN + 1])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def model():
    proto = _graph()
    return proto, OnnxModule(proto, "index.onnx").double().eval()


def _x(img, p, q):
    return torch.tensor([*img, p, q], dtype=torch.float64)


def test_imports_matches_onnxruntime_at_every_index(model):
    proto, m = model
    assert m.index_inputs == (8, 9)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for p, q in itertools.product([0.0, 0.99, 2.5, 5.9, -0.7], [0.2, 3.0, 7.9, -0.5]):
        x = _x(torch.rand(N_IMG, generator=g, dtype=torch.float64) * 4 - 2, p, q)
        ref = sess.run(None, {"x": x.float().numpy()})[0]
        with torch.no_grad():
            assert np.allclose(m(x).numpy(), ref, atol=1e-5), (p, q)


def test_no_domain_captures_it_but_the_pinned_model_it_does(model):
    _, m = model
    x = _x([0.5] * N_IMG, 2.0, 3.0)[None]
    f = _batched(m)
    with pytest.raises(UnsupportedOperation, match="read as indices"):
        bf.compute_bounds(f, x, x, method="ibp")
    pinned = m.pin({8: 2.0, 9: 3.0})
    assert pinned.index_inputs == ()
    assert {b.dtype for b in pinned.buffers() if b.is_floating_point()} == {torch.float64}  # as m computes
    with pytest.raises(ValueError, match="outside the input"):
        m.pin({10: 1.0})
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        img = torch.rand(N_IMG, generator=g, dtype=torch.float64)
        y = m(_x(img, 2.7, 3.2))
        assert torch.allclose(pinned(_x(img, -40.0, 99.0)), y)  # pinned: the index elements are ignored
    lb, ub = bf.compute_bounds(_batched(pinned), x - 0.1, x + 0.1, method="ibp")
    assert (lb <= ub).all()


def test_integer_parts_round_toward_zero():
    assert [k for k, _ in _integer_parts(-2.5, 1.2)] == [-2, -1, 0, 1]
    assert [k for k, _ in _integer_parts(-0.9, 0.9)] == [0]
    for lo, hi in [(-2.5, 1.2), (0.3, 4.0), (-3.0, -1.5), (2.0, 2.0)]:
        for k, v in _integer_parts(lo, hi):
            assert lo <= v <= hi and int(np.trunc(v)) == k


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("seed", range(6))
def test_case_bounds_contain_sampled_and_corner_outputs(model, method, seed):
    _, m = model
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(N_IMG, generator=g, dtype=torch.float64) * 4 - 2
    rad = torch.rand(N_IMG, generator=g, dtype=torch.float64) * (0.0 if seed == 0 else 0.5)
    p_lo = float(torch.rand(1, generator=g)) * 3 - 0.9
    q_lo = float(torch.rand(1, generator=g)) * 4 - 0.9
    lo = torch.cat([centre - rad, torch.tensor([p_lo, q_lo], dtype=torch.float64)])
    hi = torch.cat([centre + rad, torch.tensor([min(p_lo + 2.5, 5.99), min(q_lo + 3.3, 7.99)], dtype=torch.float64)])
    lb, ub = case_bounds(m, lo[None], hi[None], method=method)
    pts = lo + (hi - lo) * torch.rand(400, 10, generator=g, dtype=torch.float64)
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    for c in corners:  # corners of the image part, index elements at their ends
        pts = torch.cat([pts, (lo + (hi - lo) * torch.cat([c.repeat(3)[:N_IMG], c[:2]]))[None]])
    with torch.no_grad():
        ys = torch.stack([m(x) for x in pts])
    tol = 1e-9
    assert (ys >= lb - tol).all() and (ys <= ub + tol).all()
    if seed == 0:  # a point image: the bounds are the extremes over the cases, attained
        with torch.no_grad():
            yc = torch.stack([m(c_lo) for _, c_lo, _ in cases(m, lo, hi)])
        assert torch.equal(lb[0], yc.min(0).values) and torch.equal(ub[0], yc.max(0).values)


def test_too_many_cases_are_refused_before_any_bound(model):
    _, m = model
    lo = torch.zeros(10, dtype=torch.float64)
    hi = torch.full((10,), 5.0, dtype=torch.float64)
    with pytest.raises(UnsupportedOperation, match="36 combinations"):
        list(cases(m, lo, hi, max_cases=35))
    assert len(list(cases(m, lo, hi, max_cases=36))) == 36
    hi[8] = float("inf")
    with pytest.raises(UnsupportedOperation, match="unbounded"):
        list(cases(m, lo, hi))


def test_an_element_read_as_index_and_as_value_is_refused():
    with pytest.raises(UnsupportedOperation, match="both as indices"):
        OnnxModule(_graph(value_use=True), "both.onnx")


def _vnnlib(path, lo, hi, out_row: int, threshold: float):
    lines = [f"(declare-const X_{i} Real)" for i in range(10)] + [f"(declare-const Y_{j} Real)" for j in range(4)]
    for i in range(10):
        lines += [f"(assert (>= X_{i} {lo[i]:.17g}))", f"(assert (<= X_{i} {hi[i]:.17g}))"]
    lines.append(f"(assert (>= Y_{out_row} {threshold:.17g}))")  # unsafe: the output reaches the threshold
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("point", [True, False])
def test_verdicts_match_the_truth_by_enumeration(model, tmp_path, point):
    proto, m = model
    onnx_path = tmp_path / "index.onnx"
    onnx.save(proto, onnx_path)
    img = torch.linspace(-1.0, 1.5, N_IMG, dtype=torch.float64)
    rad = 0.0 if point else 0.05
    lo = torch.cat([img - rad, torch.tensor([0.0, 0.0], dtype=torch.float64)])
    hi = torch.cat([img + rad, torch.tensor([4.5, 6.5], dtype=torch.float64)])
    # the largest output 3 over the box: 2 * max over the reachable image elements 0..6
    top = 2 * float((img + rad)[:7].max())
    for threshold, truth in [(top - 0.2, "sat"), (top + 0.2, "unsat")]:
        vnnlib = tmp_path / f"p{threshold}.vnnlib"
        _vnnlib(vnnlib, lo.tolist(), hi.tolist(), 3, threshold)
        dj = parse_vnnlib(vnnlib, n_inputs=10, n_outputs=4)
        r = verify_model(m, onnx_path, dj, timeout=60)
        assert r.status == truth, (threshold, r.status, r.notes)
        if truth == "sat":  # the counterexample holds in onnxruntime
            sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            y = sess.run(None, {"x": r.counterexample.astype(np.float32)})[0]
            assert y[3] >= threshold
