"""``LinearSpec`` queries reuse the lifted model's captured graph per slope shape, with each
query's own slope: never a stale slope, the same bounds as a fresh lift, one capture."""

from __future__ import annotations

import torch

import boundflow as bf
from boundflow.domains.linear.domain import LinearPrepared


def _spec(seed: int, b: int = 3, n: int = 8, k: int = 2) -> bf.LinearSpec:
    g = torch.Generator().manual_seed(seed)
    slope = torch.randn(b, n, k, generator=g, dtype=torch.float64)
    t = torch.rand(b, k, generator=g, dtype=torch.float64)
    r = torch.rand(b, n, generator=g, dtype=torch.float64) * 0.01
    return bf.LinearSpec(slope, t - 0.1, t + 0.1, -r, r, (n,))


def _fresh(domain, model, spec, out):
    lifted, box = spec.lift(model)
    return LinearPrepared(domain, lifted, pad=False).bounds(box, out)


def test_reused_graph_bounds_equal_a_fresh_lift_for_every_slope(monkeypatch):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).double()
    out = bf.OutputSpec(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64))
    import boundflow.domains.linear.domain as dom

    captures = []
    real = dom.capture
    monkeypatch.setattr(dom, "capture", lambda *a, **k: captures.append(1) or real(*a, **k))
    for method in ("crown", "forward", "alpha-crown"):
        captures.clear()
        prepared = bf.get_domain(method).prepare(model)
        for seed in range(4):  # same shapes, different slopes and boxes
            spec = _spec(seed)
            got = prepared.bounds(spec, out)
            n = len(captures)
            ref = _fresh(bf.get_domain(method), model, spec, out)
            del captures[n:]  # the fresh lift's own capture does not count
            assert torch.allclose(got.lower, ref.lower, atol=1e-12, rtol=0), method
            assert torch.allclose(got.upper, ref.upper, atol=1e-12, rtol=0), method
            # sound at sampled points of the spec
            for _ in range(10):
                th = spec.theta_lower + (spec.theta_upper - spec.theta_lower) * torch.rand_like(spec.theta_lower)
                nu = spec.rem_lower + (spec.rem_upper - spec.rem_lower) * torch.rand_like(spec.rem_lower)
                y = model(torch.bmm(spec.slope, th.unsqueeze(-1)).squeeze(-1) + nu) @ out.C.T
                assert (got.lower <= y + 1e-10).all() and (y <= got.upper + 1e-10).all()
        assert len(captures) == 1, (method, len(captures))
        prepared.bounds(_spec(9, b=5), out)  # another batch size: one more capture
        assert len(captures) == 2


def test_weight_writes_reach_the_reused_lifted_graph():
    """The lifted graph reads the model's own parameters: an in-place write is seen (as on the
    plain path), so a reused graph never bounds old weights."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    prepared = bf.get_domain("crown").prepare(model)
    spec = _spec(0)
    prepared.bounds(spec)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    got = prepared.bounds(spec)
    ref = _fresh(bf.get_domain("crown"), model, spec, None)
    assert torch.equal(got.lower, ref.lower) and torch.equal(got.upper, ref.upper)


def test_concurrent_queries_of_one_shape_each_get_their_own_slope():
    """Queries are stateless: threads querying one prepared model with different slopes of the
    same shape each get the bounds of their own slope."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
    prepared = bf.get_domain("crown").prepare(model)
    specs = [_spec(seed) for seed in range(8)]
    prepared.bounds(specs[0])  # the shared lifted graph exists before the threads start
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: [prepared.bounds(s) for _ in range(5)], specs))
    for spec, results in zip(specs, got, strict=True):
        ref = _fresh(bf.get_domain("crown"), model, spec, None)
        for r in results:
            assert torch.allclose(r.lower, ref.lower, atol=1e-12, rtol=0)
            assert torch.allclose(r.upper, ref.upper, atol=1e-12, rtol=0)
