"""The verifier never gives a wrong answer (issue 14), on networks and properties these tests
build with known answers: output ranges inside the unsafe set with most inputs fixed, zero-width
inputs with and without ReLU splitting, a disjunction whose last disjunct alone is sat, a planted
counterexample region much smaller than the box, margins of 1e-6, strict inequalities, importer
semantics (float64 weights, narrowing casts, old-opset softmax, auto_pad), malformed
properties, the deadline, and the VNN-COMP folder runner."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from boundflow.cli import EXIT_INPUT_ERROR, EXIT_SAT, EXIT_UNDECIDED, EXIT_UNSAT, main
from boundflow.errors import UnsupportedOperation
from boundflow.onnx import VnnlibError, load_onnx
from boundflow.verify import verify
from boundflow.verify.vnncomp import read_instances, run_benchmark
from tests.support.onnx_files import forward_np, mlp_onnx, save_onnx, vnnlib_file

# -- never wrong on planted answers ------------------------------------------------------------


def _cnn(tmp: Path) -> Path:
    """Conv(1->2, 3x3) - ReLU - Flatten - Gemm on a 20x20 input."""
    g = np.random.default_rng(1)
    inits = {
        "k": (g.standard_normal((2, 1, 3, 3)) * 0.3).astype(np.float32),
        "kb": np.zeros(2, np.float32),
        "w": (g.standard_normal((2, 2 * 18 * 18)) * 0.05).astype(np.float32),
        "b": np.zeros(2, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "k", "kb"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    return save_onnx(tmp, "cnn.onnx", nodes, inits, [1, 1, 20, 20])


def test_whole_output_range_unsafe_with_fixed_inputs_is_sat(tmp_path):
    """398 of 400 inputs fixed at values that are not float32 numbers; every input is a
    counterexample (the property's unsafe set holds the whole output range)."""
    onnx = _cnn(tmp_path)
    g = np.random.default_rng(2)
    centre = g.random(400) * 0.5 + 1e-9 * np.arange(400)  # not float32 numbers
    lo, hi = centre.copy(), centre.copy()
    hi[:2] += 0.01
    y = load_onnx(onnx).double()(torch.tensor(centre).reshape(1, 1, 20, 20)).reshape(-1)
    prop = vnnlib_file(tmp_path, lo.tolist(), hi.tolist(), f"(assert (<= Y_0 {y[0].item() + 100.0!r}))", 2)
    res = verify(onnx, prop, timeout=30)
    assert res.status == "sat", res
    assert len(res.counterexample) == 400


@pytest.mark.parametrize("width", [4, 80])  # input splitting, and ReLU splitting (> 64 inputs)
def test_zero_width_inputs_near_exact_bounds(tmp_path, width):
    onnx, layers = mlp_onnx(tmp_path, [width, 12, 12, 2], seed=width)
    x = (np.random.default_rng(3).random(width) - 0.5).astype(np.float32).astype(np.float64)
    y = float(forward_np(layers, x)[0])
    for margin, expected in ((1e-3, "unsat"), (-1e-3, "sat")):
        # unsafe: Y_0 >= y + margin (unsat for margin > 0: the single point gives y)
        prop = vnnlib_file(tmp_path, x.tolist(), x.tolist(), f"(assert (>= Y_0 {y + margin!r}))", 2)
        res = verify(onnx, prop, timeout=30)
        assert res.status == expected, (margin, res)


def test_only_the_last_disjunct_is_sat(tmp_path):
    onnx, layers = mlp_onnx(tmp_path, [3, 10, 2], seed=4)
    box = [(-1.0, 1.0)] * 3
    xs = np.array(np.meshgrid(*[np.linspace(-1, 1, 9)] * 3)).reshape(3, -1).T
    ys = forward_np(layers, xs)
    top = float(ys[:, 0].max())
    bad = [f"(and (>= Y_0 {top + 10.0 + k!r}))" for k in range(6)]  # unreachable
    last = f"(and (>= Y_0 {top - 1e-3!r}))"  # reached near the best grid point
    prop = vnnlib_file(tmp_path, [b[0] for b in box], [b[1] for b in box], f"(assert (or {' '.join(bad)} {last}))", 2)
    res = verify(onnx, prop, timeout=30)
    assert res.status == "sat", res
    assert res.seconds < 30


def test_planted_tiny_counterexample_region(tmp_path):
    """y = 1 - 1000 |x - c| (two ReLUs): unsafe y >= 0.5 only on a window of width 1e-3 in
    [0, 1]; random points almost never hit it, and its gradient points there only inside."""
    c = 0.73215
    inits = {
        "w1": np.array([[1.0], [-1.0]], np.float32),
        "b1": np.array([-c, c], np.float32),
        "w2": np.array([[-1000.0, -1000.0]], np.float32),
        "b2": np.array([1.0], np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], transB=1),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    onnx = save_onnx(tmp_path, "bump.onnx", nodes, inits, [1, 1])
    res = verify(onnx, vnnlib_file(tmp_path, [0.0], [1.0], "(assert (>= Y_0 0.5))", 1), timeout=30)
    assert res.status == "sat", res
    assert abs(res.counterexample[0] - c) <= 5e-4 + 1e-6
    res = verify(onnx, vnnlib_file(tmp_path, [0.0], [1.0], "(assert (>= Y_0 1.001))", 1, "q.vnnlib"), timeout=30)
    assert res.status == "unsat", res


def test_unsat_by_a_tiny_margin(tmp_path):
    """A linear network: the exact maximum over the box is known; 1e-6 above it is unsat,
    1e-6 below it is sat."""
    w = np.array([[0.5, -0.25, 1.0]], np.float32)
    onnx = save_onnx(tmp_path, "lin.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], {"w": w}, [1, 3])
    top = 0.5 * 1 + 0.25 * 1 + 1.0 * 1  # at x = (1, -1, 1)
    for delta, expected in ((1e-6, "unsat"), (-1e-6, "sat")):
        prop = vnnlib_file(tmp_path, [-1.0] * 3, [1.0] * 3, f"(assert (>= Y_0 {top + delta!r}))", 1)
        assert verify(onnx, prop, timeout=30).status == expected, delta


def test_strict_inequality_witness_must_satisfy_it(tmp_path):
    """``Y_0 = Relu(X_0)`` is never < 0: the point y = 0 satisfies <= but not <."""
    onnx = save_onnx(tmp_path, "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])], {}, [1, 1])
    res = verify(onnx, vnnlib_file(tmp_path, [-1.0], [0.0], "(assert (< Y_0 0.0))", 1), timeout=5)
    assert res.status != "sat", res
    res = verify(onnx, vnnlib_file(tmp_path, [-1.0], [0.5], "(assert (> Y_0 0.25))", 1, "q.vnnlib"), timeout=10)
    assert res.status == "sat" and res.output[0] > 0.25


# -- importer semantics that used to give wrong unsat ----------------------------------------------


def test_double_initializers_keep_their_precision(tmp_path):
    onnx = save_onnx(
        tmp_path,
        "dbl.onnx",
        [helper.make_node("Mul", ["x", "c"], ["y"])],
        {"c": np.array([0.1], np.float64)},
        [1, 1],
        in_type=TensorProto.DOUBLE,
    )
    res = verify(onnx, vnnlib_file(tmp_path, [1.0], [1.0], f"(assert (<= Y_0 {0.1 + 1e-12!r}))", 1), timeout=10)
    assert res.status == "sat", res


def test_narrowing_cast_and_auto_pad_are_refused_by_name(tmp_path):
    cast = save_onnx(
        tmp_path, "cast.onnx", [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)], {}, [1, 2]
    )
    with pytest.raises(UnsupportedOperation, match="FLOAT16"):
        load_onnx(cast)(torch.zeros(1, 2))
    pool = save_onnx(
        tmp_path,
        "pool.onnx",
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_UPPER")],
        {},
        [1, 1, 3, 3],
    )
    with pytest.raises(UnsupportedOperation, match="auto_pad=SAME_UPPER"):
        load_onnx(pool)(torch.zeros(1, 1, 3, 3))


@pytest.mark.parametrize("opset,axis", [(11, None), (11, 2), (13, None), (13, 1)])
def test_softmax_follows_the_opset(tmp_path, opset, axis):
    import onnxruntime as ort

    attrs = {} if axis is None else {"axis": axis}
    path = save_onnx(
        tmp_path, "sm.onnx", [helper.make_node("Softmax", ["x"], ["y"], **attrs)], {}, [1, 2, 3], opset=opset
    )
    x = np.random.default_rng(0).standard_normal((1, 2, 3)).astype(np.float32)
    ref = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = load_onnx(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)


# -- malformed properties are errors, not verdicts ----------------------------------------------------


def test_bad_specs_are_named_errors(tmp_path):
    onnx, _ = mlp_onnx(tmp_path, [2, 4, 2])
    cases = {
        "lower bound .* > upper bound": "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
        "(assert (>= X_0 1))\n(assert (<= X_0 0))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= Y_0 0))\n",
        "X_1 is used but not declared": "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n"
        "(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= Y_0 0))\n",
        "declares Y_4, but the model has 2 outputs": "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
        + "".join(f"(declare-const Y_{j} Real)\n" for j in range(5))
        + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= Y_4 0))\n",
    }
    for i, (msg, text) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.vnnlib"
        p.write_text(text)
        with pytest.raises(VnnlibError, match=msg):
            verify(onnx, p, timeout=5)
        assert main(["verify", str(onnx), str(p), "--timeout", "5"]) == EXIT_INPUT_ERROR


def test_cli_checks_timeout_and_out_before_work(tmp_path, capsys):
    onnx, _ = mlp_onnx(tmp_path, [2, 4, 2])
    prop = vnnlib_file(tmp_path, [0.0, 0.0], [1.0, 1.0], "(assert (>= Y_0 1000.0))", 2)
    assert main(["verify", str(onnx), str(prop), "--timeout", "0"]) == EXIT_INPUT_ERROR
    assert main(["verify", str(onnx), str(prop), "--out", str(tmp_path / "missing" / "r.txt")]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert "--timeout must be > 0" in err and "does not exist" in err
    assert main(["verify", str(onnx), str(prop), "--out", str(tmp_path / "r.txt")]) == EXIT_UNSAT
    assert (tmp_path / "r.txt").read_text() == "unsat\n"


def test_gzipped_vnnlib_is_read(tmp_path):
    onnx, _ = mlp_onnx(tmp_path, [2, 4, 2])
    prop = vnnlib_file(tmp_path, [0.0, 0.0], [1.0, 1.0], "(assert (>= Y_0 1000.0))", 2)
    gz = tmp_path / "p.vnnlib.gz"
    gz.write_bytes(gzip.compress(prop.read_bytes()))
    assert verify(onnx, gz, timeout=10).status == "unsat"


# -- the deadline -------------------------------------------------------------------------------------


def test_hard_instance_honours_the_timeout_from_the_command_line(tmp_path):
    """A wide network whose property CROWN cannot prove: ``--timeout 3`` returns within 5 s of
    wall time, interpreter start and imports included."""
    onnx, layers = mlp_onnx(tmp_path, [100, 200, 200, 200, 2], seed=5)
    x = np.zeros(100)
    y = float(forward_np(layers, x)[0])
    prop = vnnlib_file(tmp_path, (x - 0.5).tolist(), (x + 0.5).tolist(), f"(assert (>= Y_0 {y + 3.0!r}))", 2)
    walls = []
    for _ in range(2):  # a noisy machine gets a second try; both over 5 s fails
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "boundflow", "verify", str(onnx), str(prop), "--timeout", "3"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        walls.append(time.monotonic() - t0)
        assert r.returncode in (EXIT_UNDECIDED, EXIT_UNSAT, EXIT_SAT), r.stderr
        if walls[-1] <= 5.0:
            break
    assert min(walls) <= 5.0, (walls, r.stdout)


# -- the VNN-COMP folder runner ----------------------------------------------------------------------------


def test_vnncomp_runner_writes_results_and_resumes(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    onnx, _ = mlp_onnx(bench, [2, 4, 2])
    vnnlib_file(bench, [0.0, 0.0], [1.0, 1.0], "(assert (>= Y_0 1000.0))", 2, "unsat.vnnlib")
    vnnlib_file(bench, [0.0, 0.0], [1.0, 1.0], "(assert (>= Y_0 -1000.0))", 2, "sat.vnnlib")
    (bench / "sat.vnnlib.gz").write_bytes(gzip.compress((bench / "sat.vnnlib").read_bytes()))
    csv_path = bench / "instances.csv"
    csv_path.write_text("mlp.onnx,unsat.vnnlib,10\nmlp.onnx,sat.vnnlib.gz,10\n")
    assert len(read_instances(csv_path)) == 2
    out = tmp_path / "out"
    rows = run_benchmark(csv_path, out, progress=False)
    assert [r["result"] for r in rows] == ["unsat", "sat"]
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == "benchmark,onnx,vnnlib,prepare_time,result,run_time,domains"
    assert all(int(r["domains"]) >= 0 for r in rows), rows  # the sub-domains each search bounded
    assert sorted(p.name for p in out.glob("*.txt")) == ["0000_mlp_unsat.txt", "0001_mlp_sat.txt"]
    assert (out / "0001_mlp_sat.txt").read_text().startswith("sat\n(")

    def must_not_run(*a, **k):
        raise AssertionError("a finished instance was run again")

    again = run_benchmark(csv_path, out, progress=False, verify_fn=must_not_run)
    assert [r["result"] for r in again] == ["unsat", "sat"]
    assert [r["domains"] for r in again] == [r["domains"] for r in rows]
    # as the competition runs it: the count is read from each `boundflow verify` process's output
    isolated = run_benchmark(csv_path, tmp_path / "isolated", progress=False, isolate=True)
    assert [r["result"] for r in isolated] == ["unsat", "sat"]
    assert all(r["domains"].isdigit() for r in isolated), isolated
    assert main(["vnncomp", str(csv_path), "--out", str(tmp_path / "cli")]) == 0
    (bench / "broken.csv").write_text("mlp.onnx,nothere.vnnlib,10\n")
    assert main(["vnncomp", str(bench / "broken.csv"), "--out", str(tmp_path / "x")]) == EXIT_INPUT_ERROR


def test_exit_codes_are_distinct():
    assert len({EXIT_UNSAT, EXIT_SAT, EXIT_INPUT_ERROR, EXIT_UNDECIDED}) == 4


def test_rounding_crossings_never_mark_a_sub_domain_empty():
    """A split that contradicts a sound bound by rounding noise leaves the sub-domain open; a
    real contradiction (beyond ``EMPTY_TOLERANCE``) closes it."""
    from boundflow.domains.linear.crown import empty_domains, prepare
    from boundflow.graph import capture

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1)).double()
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    g = capture(model, x)
    relu_in = next(n for n in g.gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.relu.default)
    with torch.no_grad():
        z = model[0](x)
    inf = torch.full_like(z, float("inf"))
    for shift, empty in ((1e-15, False), (1.0, True)):
        # "active" split (pre-activation >= z + shift) on a point where it equals z exactly
        state = prepare(g, x, x, overrides={relu_in.args[0].name: (z + shift * z.abs().clamp(min=1), inf)})
        assert bool(empty_domains(state)[0]) is empty, shift
