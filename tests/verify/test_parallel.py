"""Parallel branch and bound (boundflow.verify.parallel) answers what the serial search answers,
on a process pool and on Ray, for sub-domains of one instance and for whole instances; and both
equal the truth (the MILP's exact minimum, shifted to either side)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.chain_bounds import layer_bounds
from boundflow.verify import verify
from boundflow.verify.search import chain_models, root_pieces
from boundflow.verify.vnncomp import run_benchmark
from solvers.executor import make_executor
from tests.support.onnx_files import exact_margins, forward_np, milp_min, mlp_onnx, residual_cnn_onnx, vnnlib_file

# (sizes, seed, box half-width, margin): few inputs take input splitting, 70 take ReLU splitting
NETS = [
    ([4, 20, 20, 1], 2, 1.0, 0.002),
    ([3, 20, 20, 1], 5, 1.0, 0.002),
    ([70, 12, 12, 1], 1, 0.15, 0.02),
    ([70, 10, 10, 1], 4, 0.2, 0.02),
]


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """Per network, a property just below the exact minimum of ``Y_0`` (unsat) and one just
    above it (sat): ``(onnx, vnnlib, expected, layers, lo, hi, threshold)``."""
    tmp = tmp_path_factory.mktemp("parallel")
    out = []
    for n, (sizes, seed, r, margin) in enumerate(NETS):
        onnx, layers = mlp_onnx(tmp, sizes, seed, f"net{n}.onnx")
        chain = Chain(
            [torch.tensor(w, dtype=torch.float64) for w, _ in layers],
            [torch.tensor(b, dtype=torch.float64) for _, b in layers],
        )
        g = np.random.default_rng(seed)
        centre = g.uniform(-0.5, 0.5, sizes[0])
        lo, hi = centre - r, centre + r
        tlo, thi = torch.tensor(lo), torch.tensor(hi)
        bounds, _ = layer_bounds(chain, tlo[None], thi[None])
        exact = milp_min(chain, tlo, thi, bounds)
        for expected, shift in (("unsat", -margin), ("sat", margin)):
            t = exact + shift
            prop = vnnlib_file(tmp, lo.tolist(), hi.tolist(), f"(assert (<= Y_0 {t!r}))", 1, f"p{n}_{expected}.vnnlib")
            out.append((onnx, prop, expected, layers, lo, hi, t))
    return out


@pytest.fixture(scope="module")
def pools():
    process = make_executor("process", 2)
    ray_ex = make_executor("ray", 2)
    yield {"process": process, "ray": ray_ex}
    process.close()
    import ray

    ray.shutdown()


def _check_answer(res, expected, layers, lo, hi, t):
    assert res.status == expected, res
    if expected == "sat":
        x = res.counterexample.astype(np.float64)
        assert np.all(x >= np.float32(lo) - 1e-6) and np.all(x <= np.float32(hi) + 1e-6)
        assert forward_np(layers, x[None].astype(np.float32))[0, 0] <= t + 1e-5


def _count_shared(monkeypatch) -> list:
    """Record ``(kind, number of pieces, answer)`` of every search that reaches the workers."""
    import boundflow.verify.parallel as par

    shared = []
    real = par.search_pieces

    def counting(executor, tasks, deadline):
        out = real(executor, tasks, deadline)
        shared.append((tasks[0].kind, len(tasks), out.status))
        return out

    monkeypatch.setattr(par, "search_pieces", counting)
    return shared


@pytest.mark.parametrize("name", ["process", "ray"])
def test_waiting_for_workers_stops_at_the_deadline(pools, name):
    """A task still running when ``until`` passes (a worker importing a large network) is
    stopped: ``imap`` raises ``TimeoutError`` within about a second, and the executor still
    runs tasks afterwards."""
    import time

    ex = pools[name]
    t0 = time.time()
    with pytest.raises(TimeoutError):
        list(ex.imap(time.sleep, [30.0, 30.0], until=time.time() + 0.5))
    assert time.time() - t0 < 10
    assert [r for _, r in ex.imap(abs, [-2, 3])] in ([2, 3], [3, 2])


def test_root_pieces_cover_every_sign_pattern_of_the_chosen_neurons():
    from boundflow.onnx.vnnlib import Disjunct

    g = torch.Generator().manual_seed(0)
    chain = Chain(
        [torch.randn(12, 70, generator=g, dtype=torch.float64), torch.randn(1, 12, generator=g, dtype=torch.float64)],
        [torch.zeros(12, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)],
    )
    lo = -torch.ones(70, dtype=torch.float64)
    dj = Disjunct(lo, -lo, torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    status, ps = root_pieces(chain_models(chain), [dj], 4)
    assert status == "open" and len(ps) == 4
    fixed = {tuple(sorted(p.splits[name])) for p in ps for name in p.splits}
    assert len(fixed) == 1 and len(next(iter(fixed))) == 2  # the same two neurons in every piece
    patterns = {tuple(sorted((j, r[0] >= 0) for v in p.splits.values() for j, r in v.items())) for p in ps}
    assert len(patterns) == 4  # every sign pattern once
    for p in ps:  # every piece starts from the root's bounds
        assert p.known is not None and p.params is not None


def test_parallel_verdicts_equal_serial_and_truth(instances, pools, monkeypatch):

    shared = _count_shared(monkeypatch)  # (kind, number of pieces, answer) of every shared search
    for n, (onnx, prop, expected, layers, lo, hi, t) in enumerate(instances):
        serial = verify(onnx, prop, timeout=60)
        _check_answer(serial, expected, layers, lo, hi, t)
        for name, ex in pools.items():
            if name == "ray" and n % 3:
                continue  # Ray's per-task cost is higher: both kinds and answers, not every instance
            res = verify(onnx, prop, timeout=60, executor=ex)
            assert res.status == serial.status, (name, prop.name, res, serial)
            _check_answer(res, expected, layers, lo, hi, t)
    # the searches were shared out, with both kinds of pieces, on both executors
    assert {k for k, n, _ in shared if n > 1} == {"input", "relu"}, shared


def test_benchmark_over_instances_equals_serial(instances, pools, tmp_path):
    csv = tmp_path / "instances.csv"
    some = instances[::3]  # both answers, both kinds of search
    csv.write_text("".join(f"{o},{p},60,{e}\n" for o, p, e, *_ in some))
    serial = run_benchmark(csv, tmp_path / "serial", progress=False)
    by_inst = run_benchmark(csv, tmp_path / "inst", progress=False, executor=pools["process"], parallel="instances")
    assert [r["result"] for r in serial] == [r["result"] for r in by_inst] == [e for _, _, e, *_ in some]
    assert [(r["onnx"], r["vnnlib"]) for r in serial] == [(r["onnx"], r["vnnlib"]) for r in by_inst]


def test_cli_parallel_options(instances, capsys):
    from boundflow.cli import EXIT_INPUT_ERROR, EXIT_SAT, EXIT_UNSAT, main

    onnx, prop, expected, *_ = instances[0]
    assert main(["verify", str(onnx), str(prop), "--workers", "0"]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err.strip()
    assert err == "boundflow: error: verify: --workers must be >= 1, got 0"
    rc = main(["verify", str(onnx), str(prop), "--workers", "2", "--timeout", "60"])
    assert rc == {"unsat": EXIT_UNSAT, "sat": EXIT_SAT}[expected]


def test_general_graph_activation_search_is_shared_out_and_agrees_with_truth(tmp_path, pools, monkeypatch):
    """A residual CNN (not a ReLU chain; 81 inputs): the activation-splitting search's root is
    cut into pieces that the workers search (they import the network again); the verdicts are
    the serial run's and the truth's (thresholds on either side of the MILP's exact minimum)."""
    import boundflow as bf
    from boundflow.onnx import load_onnx
    from boundflow.verify import pipeline

    onnx = residual_cnn_onnx(tmp_path, 0)
    module = load_onnx(onnx)
    x0 = np.random.default_rng(10).uniform(0, 1, 81)
    lo, hi = (x0 - 0.02).tolist(), (x0 + 0.02).tolist()
    exact = exact_margins(module, lo, hi)
    f = pipeline._batched(module.double().eval())
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    box = bf.Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64))
    crown = bf.prepare(f, "crown").bounds(box, bf.OutputSpec(C))
    gap = exact - crown.lower[0].numpy()
    assert (gap > 1e-3).all(), "the root bound already proves it: the case tests nothing"
    body = "(assert (or (and (>= Y_1 (+ Y_0 {a!r}))) (and (>= Y_2 (+ Y_0 {b!r})))))"
    t_unsat = exact - 0.25 * gap
    unsat = vnnlib_file(tmp_path, lo, hi, body.format(a=float(-t_unsat[0]), b=float(-t_unsat[1])), 3, "u.vnnlib")
    shared = _count_shared(monkeypatch)
    serial = verify(onnx, unsat, timeout=60)
    assert serial.status == "unsat", serial
    res = verify(onnx, unsat, timeout=60, executor=pools["process"])
    assert res.status == "unsat", res
    assert shared and shared[0][0] == "graph" and shared[0][1] >= 4, shared
    # a threshold above one row's exact minimum: a counterexample exists, never "unsat"
    t_sat = exact.copy()
    t_sat[0] += 0.1
    t_sat[1] = exact[1] - 0.25 * gap[1]
    sat = vnnlib_file(tmp_path, lo, hi, body.format(a=float(-t_sat[0]), b=float(-t_sat[1])), 3, "s.vnnlib")
    assert verify(onnx, sat, timeout=30, executor=pools["process"]).status == "sat"
