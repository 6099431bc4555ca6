"""Tiny ONNX models and VNN-LIB properties written at test time (no data needed), their float64
forward passes, and exact answers by MILP: the verifier's tests compare verdicts against these."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

import boundflow as bf
from boundflow.verify import pipeline

F32 = TensorProto.FLOAT


def save_onnx(tmp: Path, name: str, nodes, inits: dict, in_shape, in_type=F32, opset=13) -> Path:
    """An ONNX model with input ``x`` and output ``y`` (its shape taken from onnxruntime)."""
    import onnxruntime as ort

    def build(out_shape):
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", in_type, in_shape)],
            [helper.make_tensor_value_info("y", in_type, out_shape)],
            [numpy_helper.from_array(np.asarray(v), name=k) for k, v in inits.items()],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)

    x = np.zeros(in_shape, np.float64 if in_type == TensorProto.DOUBLE else np.float32)
    try:
        sess = ort.InferenceSession(build(None).SerializeToString(), providers=["CPUExecutionProvider"])
        shape = list(sess.run(None, {"x": x})[0].shape)
    except Exception:  # a model onnxruntime refuses (e.g. a cast it lacks): keep the input's rank
        shape = list(in_shape)
    path = tmp / name
    path.write_bytes(build(shape).SerializeToString())
    return path


def mlp_onnx(tmp: Path, sizes: list[int], seed: int = 0, name: str = "mlp.onnx") -> tuple[Path, list]:
    """A Gemm/ReLU network on input ``(1, sizes[0])``; returns the path and float32 weights."""
    g = np.random.default_rng(seed)
    nodes, inits, layers, cur = [], {}, [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (g.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        bias = (g.standard_normal(b) * 0.1).astype(np.float32)
        inits[f"w{i}"], inits[f"b{i}"] = w, bias
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out if out == "y" else f"z{i}"], transB=1))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        cur = out
        layers.append((w, bias))
    return save_onnx(tmp, name, nodes, inits, [1, sizes[0]]), layers


def forward_np(layers, x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def vnnlib_file(tmp: Path, lo, hi, body: str, n_out: int, name="p.vnnlib") -> Path:
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (a, b) in enumerate(zip(lo, hi)):
        lines += [f"(assert (>= X_{i} {a!r}))", f"(assert (<= X_{i} {b!r}))"]
    lines.append(body)
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def residual_cnn_onnx(tmp: Path, seed: int) -> Path:
    """Conv(1->3) - ReLU - Conv(3->3) + skip - ReLU - Flatten - Gemm(-> 3) on a 1x9x9 input
    (81 inputs: wide enough for the ReLU search)."""
    g = np.random.default_rng(seed)
    inits = {
        "k1": (g.standard_normal((3, 1, 3, 3)) * 0.5).astype(np.float32),
        "b1": (g.standard_normal(3) * 0.1).astype(np.float32),
        "k2": (g.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float32),
        "b2": (g.standard_normal(3) * 0.1).astype(np.float32),
        "w": (g.standard_normal((3, 3 * 9 * 9)) * 0.1).astype(np.float32),
        "b": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "k2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "c1"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, [1, 1, 9, 9])],
        [helper.make_tensor_value_info("y", F32, [1, 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    path = tmp / f"res{seed}.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def exact_margins(module, lo, hi) -> np.ndarray:
    """The exact minima of ``y0 - y1`` and ``y0 - y2`` over the box (MILP)."""
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    f = pipeline._batched(module.double().eval())
    lo_t = torch.as_tensor(lo, dtype=torch.float64)[None]
    hi_t = torch.as_tensor(hi, dtype=torch.float64)[None]
    res = bf.prepare(f, "milp").bounds(bf.Box(lo_t, hi_t), bf.OutputSpec(C))
    assert res.exact is not None and bool(res.exact[:, :].all())
    return res.lower[0].numpy()


def milp_min(chain, lo, hi, bounds) -> float:
    """The exact minimum of the worst margin over the box (HiGHS, optimal status)."""
    import numpy as np

    from boundflow.encode.network import margin_program
    from solvers.backends import make_solver

    g, names = chain.graph()
    ranges = {n: (l[0], u[0]) for n, (l, u) in zip(names, bounds, strict=True)}
    C = torch.eye(chain.widths[-1], dtype=torch.float64)
    p, x, t, exact = margin_program(g, lo[None], hi[None], C, None, ranges)
    assert exact
    s = make_solver(p, "milp")
    c = np.zeros(p.n_vars)
    c[t] = 1
    s.minimize(c, 30)
    return float(s.mip.h.getInfo().objective_function_value)
