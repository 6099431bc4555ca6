"""The verifier's ReLU search on general graphs (not ReLU chains): beta-CROWN sub-domains,
branching scores, several neurons split at once while the search is narrow, and disjuncts
sharing a box searched together.  Every answer is checked against the truth from an exact MILP
on a residual CNN the chain recogniser refuses (no data needed)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper

import boundflow as bf
from boundflow.domains.linear.chain import extract_chain
from boundflow.onnx import load_onnx
from boundflow.verify import pipeline, search
from tests.support.onnx_files import F32, exact_margins, residual_cnn_onnx, vnnlib_file


@pytest.mark.parametrize("seed", [0, 1])
def test_general_relu_search_answers_match_the_exact_minimum(tmp_path, seed):
    onnx = residual_cnn_onnx(tmp_path, seed)
    module = load_onnx(onnx)
    f = pipeline._batched(module.double().eval())
    assert extract_chain(f, 81) is None  # the general path, not the ReLU-chain engine
    x0 = np.random.default_rng(seed + 10).uniform(0, 1, 81)
    eps = 0.02
    lo, hi = (x0 - eps).tolist(), (x0 + eps).tolist()
    exact = exact_margins(module, lo, hi)
    crown = bf.prepare(f, "crown").bounds(
        bf.Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)),
        bf.OutputSpec(torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)),
    )
    # thresholds between CROWN's root bound and the exact minimum: only the search can prove them
    gap = exact - crown.lower[0].numpy()
    assert (gap > 1e-3).all(), "the root bound already proves it: the case tests nothing"
    t_unsat = exact - 0.25 * gap  # unsafe: y0 - yi <= t (below the minimum: unsat)
    body = "(assert (or (and (>= Y_1 (+ Y_0 {a!r}))) (and (>= Y_2 (+ Y_0 {b!r})))))"
    # "Y_i >= Y_0 + (-t)" is y0 - yi <= t
    unsat = vnnlib_file(tmp_path, lo, hi, body.format(a=float(-t_unsat[0]), b=float(-t_unsat[1])), 3, "unsat.vnnlib")
    res = pipeline.verify(onnx, unsat, timeout=60)
    assert res.status == "unsat", res
    assert res.boxes > 1  # decided by the search, not at the root
    # a threshold above the exact minimum of one row: a counterexample exists (and the attacks
    # find it; a search that proved this would be unsound)
    t_sat = exact.copy()
    t_sat[0] += 0.1
    t_sat[1] = exact[1] - 0.25 * gap[1]
    sat = vnnlib_file(tmp_path, lo, hi, body.format(a=float(-t_sat[0]), b=float(-t_sat[1])), 3, "sat.vnnlib")
    res = pipeline.verify(onnx, sat, timeout=30)
    assert res.status == "sat", res


def test_group_proved_needs_every_disjunct():
    m = torch.tensor([[0.5, -0.1, 0.2], [0.5, 0.3, -0.2], [0.1, 0.1, 0.1]])
    owner = torch.tensor([0, 1, 1])  # disjunct 0: row 0; disjunct 1: rows 1 and 2 (either proves it)
    assert search.group_proved(m, owner, 2).tolist() == [True, True, True]
    owner = torch.tensor([0, 1, 2])
    assert search.group_proved(m, owner, 3).tolist() == [False, False, True]
    empty = torch.tensor([True, False, False])
    assert search.group_proved(m, owner, 3, empty).tolist() == [True, False, True]


def test_branch_choices_prefer_scores_and_fall_back_to_area():
    lo = torch.tensor([[-1.0, -1.0, 0.5, -2.0]])
    hi = torch.tensor([[1.0, 2.0, 1.0, 0.5]])
    res = bf.Bounds(torch.zeros(1, 1), torch.zeros(1, 1), intermediate={"z": (lo, hi)})
    relu = search._RELU_PIECES
    # no scores: by area u(-l)/(u-l): 0.5, 0.667, (stable), 0.4
    assert search._branch_choices(res, ["z"], 0, 2) == [("z", 1, relu), ("z", 0, relu)]
    res.scores = {"z": torch.tensor([[0.0, 0.1, 9.0, 3.0]])}  # a stable neuron's score never counts
    assert search._branch_choices(res, ["z"], 0, 2) == [("z", 3, relu), ("z", 1, relu)]
    stable = bf.Bounds(torch.zeros(1, 1), torch.zeros(1, 1), intermediate={"z": (lo.abs(), hi.abs())})
    assert search._branch_choices(stable, ["z"], 0, 3) == []


def test_general_choices_bisect_the_best_scored_wide_range():
    lo = torch.tensor([[-1.0, 0.0, 2.0]])
    hi = torch.tensor([[3.0, 1e-9, 4.0]])
    res = bf.Bounds(torch.zeros(1, 1), torch.zeros(1, 1), intermediate={"s": (lo, hi)})
    res.scores = {"s": torch.tensor([[1.0, 50.0, 2.0]])}  # the middle range is too narrow to split
    assert search._general_choices(res, ["s"], 0, 2) == [
        ("s", 2, ((2.0, 3.0), (3.0, 4.0))),
        ("s", 0, ((-1.0, 1.0), (1.0, 3.0))),
    ]
    res.scores = {"s": torch.zeros(1, 3)}  # no score: the widest range, so emptiness can still show
    assert search._general_choices(res, ["s"], 0, 1) == [("s", 0, ((-1.0, 1.0), (1.0, 3.0)))]
    res.intermediate = {"s": (lo, lo + 1e-9)}
    assert search._general_choices(res, ["s"], 0, 1) == []


def _sigmoid_net(seed: int):
    """81 inputs, three sigmoid neurons (two on disjoint input halves, the third their mean),
    margin ``2 s(z1) + 2 s(z2) - 3.5 s((z1 + z2) / 2 + 0.3)``: no ReLU to split, and (z1, z2)
    ranges over a rectangle, so a grid gives the true minimum."""
    g = torch.Generator().manual_seed(seed)
    W = torch.zeros(3, 81, dtype=torch.float64)
    W[0, :40] = torch.randn(40, generator=g, dtype=torch.float64) * 0.3
    W[1, 40:] = torch.randn(41, generator=g, dtype=torch.float64) * 0.3
    W[2] = 0.5 * (W[0] + W[1])
    b = np.array([0.0, 0.0, 0.3])
    a = np.array([[2.0, 2.0, -3.5], [0.0, 0.0, 0.0]])
    return W.numpy(), b, a


def _sigmoid_onnx(tmp: Path, seed: int) -> Path:
    W, b, a = _sigmoid_net(seed)
    inits = {
        "W": W.astype(np.float32),
        "b": b.astype(np.float32),
        "a": a.astype(np.float32),
        "c": np.zeros(2, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1),
        helper.make_node("Sigmoid", ["z"], ["s"]),
        helper.make_node("Gemm", ["s", "a", "c"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, [1, 81])],
        [helper.make_tensor_value_info("y", F32, [1, 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    path = tmp / f"sig{seed}.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def test_sigmoid_ranges_are_bisected_where_no_relu_is_left(tmp_path):
    seed = 0
    onnx = _sigmoid_onnx(tmp_path, seed)
    W, b, _ = (np.asarray(t, dtype=np.float32).astype(np.float64) for t in _sigmoid_net(seed))
    x0 = np.random.default_rng(seed).uniform(0, 1, 81)
    eps = 0.3
    lo, hi = x0 - eps, x0 + eps
    # the rectangle of (z1, z2) and the minimum on a fine grid (the margin's Lipschitz constant
    # is below 2 per unit of z, so the grid's minimum is within 0.01 of the true one)
    r1 = (W[0] @ x0, eps * np.abs(W[0]).sum())
    r2 = (W[1] @ x0, eps * np.abs(W[1]).sum())
    z1 = np.linspace(r1[0] - r1[1], r1[0] + r1[1], 1601)[:, None]
    z2 = np.linspace(r2[0] - r2[1], r2[0] + r2[1], 1601)[None]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    grid_min = float((2 * sig(z1) + 2 * sig(z2) - 3.5 * sig(0.5 * (z1 + z2) + 0.3)).min())
    module = load_onnx(onnx)
    f = pipeline._batched(module.double().eval())
    crown = bf.prepare(f, "crown").bounds(
        bf.Box(torch.tensor(lo)[None], torch.tensor(hi)[None]),
        bf.OutputSpec(torch.tensor([[1.0, -1.0]], dtype=torch.float64)),
    )
    gap = grid_min - 0.01 - float(crown.lower)
    assert gap > 0.1, "the root bound already proves it: the case tests nothing"
    t = grid_min - 0.01 - 0.25 * gap  # unsafe: y0 - y1 <= t, below the minimum: unsat
    unsat = vnnlib_file(tmp_path, lo.tolist(), hi.tolist(), f"(assert (>= Y_1 (+ Y_0 {-t!r})))", 2, "u.vnnlib")
    res = pipeline.verify(onnx, unsat, timeout=60)
    assert res.status == "unsat", res
    assert res.boxes > 1
    sat = vnnlib_file(
        tmp_path, lo.tolist(), hi.tolist(), f"(assert (>= Y_1 (+ Y_0 {-(grid_min + 0.05)!r})))", 2, "s.vnnlib"
    )
    assert pipeline.verify(onnx, sat, timeout=30).status == "sat"


def test_children_cover_their_parent_whatever_the_bounds_that_placed_the_cut():
    """The two children of a split take the parent's own range cut at the split point (the
    bounds that suggested the pieces may be off by rounding; no point may fall between them)."""
    dom = {"s": {3: (-2.0, 5.0)}}
    pieces = ((-1.9, 1.0), (1.0, 4.9))  # from computed bounds slightly inside the parent's range
    kids = [search._child_range(dom, "s", 3, p, pieces) for p in pieces]
    assert kids == [(-2.0, 1.0), (1.0, 5.0)]
    relu = search._RELU_PIECES
    assert [search._child_range({}, "z", 0, p, relu) for p in relu] == [(0.0, float("inf")), (-float("inf"), 0.0)]


def test_a_conjunction_is_unsat_only_while_every_part_is():
    j = search.joined_status
    assert j("unsat", "unsat") == "unsat"
    assert j("unsat", "unknown") == "unknown" and j("unknown", "timeout") == "timeout"
    assert j("timeout", "unknown") == "timeout" and j("unknown", "unsat") == "unknown"


def test_a_graph_the_linear_domain_does_not_take_is_searched_one_disjunct_at_a_time():
    from boundflow.onnx.vnnlib import Disjunct

    class NotBatchFirst(torch.nn.Module):
        batchable = False

        def forward(self, x):
            return x

    box = torch.zeros(100, dtype=torch.float64), torch.ones(100, dtype=torch.float64)
    dj = Disjunct(*box, torch.ones(1, 100, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert pipeline._verify_wide_group(NotBatchFirst(), [dj, dj], None, 0.0) is None


def test_inherited_bounds_are_rounded_outward_to_float32():
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(1000, dtype=torch.float64, generator=gen)
    hi = lo + torch.rand(1000, dtype=torch.float64, generator=gen)
    lo[:3] = torch.tensor([-float("inf"), 0.0, 1.0])
    hi[:3] = torch.tensor([float("inf"), 0.0, 1.0])
    l32, h32 = search._outward32(lo, hi)
    assert l32.dtype == h32.dtype == torch.float32
    assert bool((l32.double() <= lo).all() and (h32.double() >= hi).all())
    # and no looser than one float32 step
    assert bool((torch.nextafter(l32, torch.tensor(float("inf"))).double() > lo)[3:].all())


@pytest.mark.parametrize("seed", range(3))
def test_bounds_that_settle_a_sign_spare_its_crown_row_and_stay_sound(seed, monkeypatch):
    """A sub-domain given sound bounds of its own (a parent's, or its own earlier ones) as
    overrides: the neurons whose sign they settle get no CROWN row, and the final bounds are no
    looser than without them and contain sampled outputs of the sub-domain."""
    import importlib

    from boundflow.domains.linear.crown import crown, prepare
    from boundflow.graph import capture

    crown_mod = importlib.import_module("boundflow.domains.linear.crown")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(27, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
    ).double().eval()  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, 1, 5, 5, dtype=torch.float64, generator=gen)
    lo, hi = centre - 0.3, centre + 0.3
    g = capture(model, centre)
    rows = []
    real = crown_mod.node_bounds

    def counted(state, node, budget=2**24, mask=None):
        rows.append(int(mask.sum()) if mask is not None else math.prod(state.lower[node].shape))
        return real(state, node, budget, mask)

    monkeypatch.setattr(crown_mod, "node_bounds", counted)
    plain = prepare(g, lo, hi)
    n_plain = sum(rows)
    relu_in = [
        n.args[0] for n in g.gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.relu.default
    ]
    known = {n.name: (plain.lower[n], plain.upper[n]) for n in relu_in}
    rows.clear()
    again = prepare(g, lo, hi, overrides=known)
    assert sum(rows) < n_plain  # CROWN settled signs that the interval bounds left open
    lb0, ub0, _ = crown(g, lo, hi, state=plain)
    lb1, ub1, _ = crown(g, lo, hi, state=again)
    assert bool((lb1 >= lb0 - 1e-9).all() and (ub1 <= ub0 + 1e-9).all())
    x = lo + (hi - lo) * torch.rand(3000, 1, 1, 5, 5, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        y = model(x.reshape(-1, 1, 5, 5))
    assert bool((y >= lb1 - 1e-9).all() and (y <= ub1 + 1e-9).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sub_domain_with_nothing_to_split_is_decided_by_the_exact_leaf(tmp_path, seed, monkeypatch):
    """With branching switched off, the search hands its root (both disjuncts sharing the box)
    to the exact leaf, whose MILP is the network: ``unsat`` below the exact minimum, ``sat``
    with a confirmed witness above it — never ``unknown``."""
    from boundflow.onnx.vnnlib import Disjunct

    onnx = residual_cnn_onnx(tmp_path, seed)
    module = load_onnx(onnx)
    f = pipeline._batched(module.double().eval())
    x0 = np.random.default_rng(seed + 10).uniform(0, 1, 81)
    lo, hi = x0 - 0.02, x0 + 0.02
    exact = exact_margins(module, lo.tolist(), hi.tolist())
    C2 = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    root = bf.prepare(f, "alpha-crown").bounds(
        bf.Box(torch.tensor(lo)[None], torch.tensor(hi)[None]), bf.OutputSpec(C2)
    )
    gap = float(exact[0] - root.lower[0, 0])
    assert gap > 1e-3, "the root bound already proves it: the case tests nothing"
    monkeypatch.setattr(search, "_branch_choices", lambda *a: [])
    monkeypatch.setattr(search, "_general_choices", lambda *a: [])
    calls = []
    real_leaf = search._exact_leaf
    monkeypatch.setattr(search, "_exact_leaf", lambda *a: calls.append(1) or real_leaf(*a))
    checker = pipeline._Checker.from_path(onnx, module)
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    for shift, want in ((-0.25 * gap, "unsat"), (0.05, "sat")):
        calls.clear()
        # two single-row disjuncts "y0 - yi <= t_i" on one box, t_0 around row 0's minimum
        t = exact.copy()
        t[0] += shift
        t[1] -= 0.5  # row 1 holds everywhere: only row 0 decides
        group = [
            Disjunct(lo_t, hi_t, torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64), torch.tensor([t[0]])),
            Disjunct(lo_t, hi_t, torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64), torch.tensor([t[1]])),
        ]
        st, n, w = search.relu_search(pipeline._Bounder(f).search_models(), group, time.monotonic() + 60, checker.check)
        assert st == want, (shift, st)
        assert calls  # decided by the leaf, not by the root's bound
        if want == "sat":
            assert w is not None
            x, y = np.asarray(w[:81]), np.asarray(w[81:])
            assert (x >= lo - 1e-6).all() and (x <= hi + 1e-6).all() and y[0] - y[1] <= t[0] + 1e-6
