"""``make demo``: the first thing a new user sees, on embedded data, in a few minutes on 2 cores.

1-3. bound a small classifier's outputs and its training gradients when the inputs and the
     parameters are intervals, and check the bounds against sampled concrete models;
4.   a short certified training run (FullCert) on Two-Moons with its plots and a replay check;
5.   verification of shared VNN-COMP instances (``../shared``; skipped when absent), every answer
     compared with the known one;
6.   a short relaxation-tightness table (every method on one digits network);
7.   a point-cloud certification (rotation, interval vs Taylor relaxation) with its picture.

The exit status is non-zero when any check fails (a bound violated, a wrong verification answer,
an inconsistent tightness ordering)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import boundflow as bf
from boundflow.atomic import atomic_write_text


def _two_moons(n: int, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles (the classic Two-Moons layout), deterministic."""
    n0 = n // 2
    t0 = torch.rand(n0, generator=gen, dtype=torch.float64) * math.pi
    t1 = torch.rand(n - n0, generator=gen, dtype=torch.float64) * math.pi
    a = torch.stack([torch.cos(t0), torch.sin(t0)], 1)
    b = torch.stack([1 - torch.cos(t1), 0.5 - torch.sin(t1)], 1)
    x = torch.cat([a, b]) + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n - n0, dtype=torch.long)])
    return x, y


# the files the demo writes into its folder
OUTPUTS = ["demo_training.png", "demo_regions.png", "demo_tightness.png", "demo_tightness.md", "demo_pointcloud.png"]


def run_demo(eps: float = 0.05, param_radius: float = 0.01, seed: int = 0, out_dir: str = "results") -> int:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = _two_moons(200, 0.1, gen)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    print("BoundFlow demo: a Linear-ReLU-Linear-Tanh-Linear classifier on Two-Moons points")
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    acc = (model(x).argmax(1) == y).double().mean().item()
    print(f"  trained normally for 300 steps: accuracy {acc:.3f} ({time.perf_counter() - t0:.1f}s)")

    # 1. output bounds over an l-infinity ball
    pick = torch.tensor([0, 1, 100, 101])
    xs, ys = x[pick], y[pick]
    lo, hi = bf.compute_bounds(model, xs - eps, xs + eps)
    print(f"\n1. Output bounds for 4 points, every input within eps={eps} (compute_bounds, method='ibp'):")
    for i in range(4):
        cert = lo[i, ys[i]] > hi[i, 1 - ys[i]]
        print(
            f"   point {i} (label {ys[i].item()}): logit0 in [{lo[i, 0]:+.3f}, {hi[i, 0]:+.3f}]  "
            f"logit1 in [{lo[i, 1]:+.3f}, {hi[i, 1]:+.3f}]  {'certified' if cert else 'not certified'}"
        )

    # 2. interval inputs AND interval parameters, interval gradients from loss.backward()
    params = bf.interval_parameters(model, radius=param_radius)
    xi = bf.IntervalTensor.from_eps(xs, eps)
    loss = F.cross_entropy(functional_call(model, params, (xi,)), ys)
    loss.backward()
    g = params["0.weight"].grad
    print(f"\n2. Interval inputs (eps={eps}) and interval parameters (radius={param_radius}):")
    print(f"   loss in [{loss.lower.item():.4f}, {loss.upper.item():.4f}]")
    rows = g.width.sum(1).topk(4).indices.tolist()
    print(f"   gradient of the first layer's weight, rows {rows} (the widest; interval per entry):")
    for r in rows:
        cells = "  ".join(f"[{g.lower[r, c].item():+.4f}, {g.upper[r, c].item():+.4f}]" for c in range(2))
        print(f"     {cells}")

    # 3. check: concrete models and inputs drawn from the boxes stay inside
    worst_out = 0.0
    inside = True
    for _ in range(200):
        p = {
            n: t.lower + (t.upper - t.lower) * torch.rand(t.shape, generator=gen, dtype=t.dtype)
            for n, t in params.items()
        }
        for t in p.values():
            t.requires_grad_(True)
        xc = xs + (torch.rand(xs.shape, generator=gen, dtype=xs.dtype) * 2 - 1) * eps
        lc = F.cross_entropy(functional_call(model, p, (xc,)), ys)
        lc.backward()
        inside &= bool(loss.lower <= lc <= loss.upper)
        for n, t in p.items():
            inside &= params[n].grad.contains(t.grad, atol=1e-12)
        worst_out = max(worst_out, (lc - loss.upper).item(), (loss.lower - lc).item())
    verdict = "all inside" if inside else "VIOLATION"
    print(f"\n3. 200 sampled concrete (input, parameter) pairs: loss and all gradients {verdict}")
    ok = inside and _certified_training_demo(out_dir)
    ok = _verify_demo() and ok
    ok = _tightness_demo(out_dir) and ok
    ok = _pointcloud_demo(out_dir) and ok
    print(f"\nDemo {'finished: every check passed' if ok else 'FAILED: see above'}; outputs in {out_dir}/")
    return 0 if ok else 1


# instances that the verifier settles in about a second each (see docs/benchmarks/vnncomp.md)
DEMO_INSTANCES = [
    ("test", "test_nano.onnx", "test_nano.vnnlib"),
    ("test", "test_small.onnx", "test_small.vnnlib"),
    ("test", "test_sat.onnx", "test_prop.vnnlib"),
    ("test", "test_unsat.onnx", "test_prop.vnnlib"),
    ("acasxu", "onnx/ACASXU_run2a_1_7_batch_2000.onnx", "vnnlib/prop_1.vnnlib"),
    ("acasxu", "onnx/ACASXU_run2a_4_5_batch_2000.onnx", "vnnlib/prop_2.vnnlib"),
    ("mnist_fc", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_0_0.03.vnnlib"),
]


def shared_vnncomp():
    """The shared VNN-COMP folder: ``$BOUNDFLOW_SHARED``, else ``../shared`` next to the
    checkout; ``None`` when neither exists."""
    import os
    from pathlib import Path

    roots = [os.environ.get("BOUNDFLOW_SHARED"), Path(__file__).resolve().parents[2] / "shared"]
    for r in roots:
        if r and (Path(r) / "benchmarks" / "vnncomp").exists():
            return Path(r) / "benchmarks" / "vnncomp"
    return None


def _expected(root, bench: str, onnx: str, vnnlib: str) -> str | None:
    import csv

    with open(root / bench / "instances.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["onnx"] == onnx and row["vnnlib"] == vnnlib:
                return row.get("expected")
    return None


def _verify_demo() -> bool:
    from boundflow.verify import verify

    root = shared_vnncomp()
    print("\n5. Verifying shared VNN-COMP instances (boundflow verify):")
    if root is None:
        print("   shared VNN-COMP instances not found (set BOUNDFLOW_SHARED); skipped")
        return True
    ok = True
    print(f"   {'benchmark':9} {'network':34} {'property':22} {'answer':7} {'known':6} {'s':>5}")
    for bench, onnx, vnnlib in DEMO_INSTANCES:
        if not (root / bench / onnx).exists():
            continue
        res = verify(root / bench / onnx, root / bench / vnnlib, timeout=30)
        known = _expected(root, bench, onnx, vnnlib)
        wrong = known in ("sat", "unsat") and res.status in ("sat", "unsat") and res.status != known
        ok &= not wrong
        name = onnx.split("/")[-1].replace("_batch_2000", "")
        print(
            f"   {bench:9} {name:34} {vnnlib.split('/')[-1]:22} {res.status:7} {known or '?':6} {res.seconds:5.2f}"
            + ("  WRONG" if wrong else "")
        )
    print("   sat answers carry a counterexample re-checked in onnxruntime")
    return ok


def _tightness_demo(out_dir: str) -> bool:
    from pathlib import Path

    from boundflow.bench import check_consistency, run
    from boundflow.bench.networks import builtin_cases
    from boundflow.bench.tightness import markdown, plot

    case = builtin_cases(quick=True, points=3)[0]
    print(f"\n6. Relaxation tightness on {case.name} (digits), 3 test points, eps 0.01 and 0.03:")
    res = run([case], [0.01, 0.03], time_limit=2.0, progress=False)
    print("   method       eps    mean gap to exact   mean width   certified   ms/point")
    for r in res.rows:
        print(
            f"   {r['method']:12} {r['eps']:<6g} {r['mean_gap']:17.4g} {r['mean_width']:12.4g} "
            f"{r['certified']:11.2f} {r['ms_per_point']:10.1f}"
        )
    bad = check_consistency(res)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "demo_tightness.png")
    atomic_write_text(out / "demo_tightness.md", markdown(res, "boundflow demo (section 6)"))
    print(f"   orderings (milp >= lp >= crown >= ibp, all below the attack): {'hold' if not bad else bad}")
    print(f"   full run: boundflow bench tightness [--quick]; plot {out / 'demo_tightness.png'}")
    return not bad


def _pointcloud_demo(out_dir: str) -> bool:
    from pathlib import Path

    import boundflow.pointcloud as pc
    from boundflow.pointcloud.plots import plot_cloud

    print("\n7. Point-cloud certification (3DCertify): PointNet on embedded 3-D shapes, rotation-z by +-3 deg:")
    model, info = pc.train_pointnet(n_per_class=60, n_points=32, epochs=20, seed=0)
    x, y = pc.make_shapes(2, 32, seed=20_000)
    print(f"   trained PointNet (32 points): test accuracy {info['test_accuracy']:.3f}")
    res = {}
    for rel in ("interval", "taylor"):
        res[rel] = pc.certify(model, x, y, "rotation-z", 3, "deg", splits=2, relaxation=rel)
        r = res[rel]
        print(
            f"   {rel:8} relaxation: {sum(r.certified)}/{len(r.certified)} clouds certified "
            f"({sum(r.correct)} correct), {sum(r.seconds) / len(r.seconds):.2f} s per cloud"
        )
    # check: no sampled rotation changes a certified prediction
    ok = True
    g = torch.Generator().manual_seed(0)
    for i, cert in enumerate(res["taylor"].certified):
        if cert:
            angles = (torch.rand(20, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(3)
            clouds = torch.stack([pc.apply(x[i], "rotation-z", a.reshape(1)) for a in angles])
            with torch.no_grad():
                ok &= bool((model(clouds).argmax(1) == y[i]).all())
    first = next((i for i, c in enumerate(res["taylor"].certified) if c), 0)
    path = Path(out_dir) / "demo_pointcloud.png"
    plot_cloud(x[first], "rotation-z", res["taylor"].theta_lower, res["taylor"].theta_upper, path,
               title=f"object {first}: certified for rotation-z +-3 deg", unit="deg")  # fmt: skip
    print(f"   20 sampled rotations per certified cloud keep the prediction: {ok}; picture {path}")
    return ok


def _certified_training_demo(out_dir: str) -> bool:
    """A short FullCert run on Two-Moons, its plots, and a replay check."""
    from pathlib import Path

    import boundflow.train as T
    from boundflow.models import hidden_mlp as mlp
    from boundflow.train.plots import plot_history, plot_regions

    d = T.load_dataset("moons", n_samples=1000)
    model = mlp(2, 1, hidden=20, layers=2, seed=0)
    eps = 0.01
    cfg = T.TrainConfig(epochs=4, lr=0.1, batch_size=100, loss="bce")
    print(
        f"\n4. Certified training (FullCert) on Two-Moons, every training point within eps={eps}, "
        f"2-20-1 MLP, {cfg.epochs} epochs:"
    )
    bounds = T.certified_training(model, T.linf(d.x_train, d.y_train, eps), cfg, test=(d.x_test, d.y_test))
    for h in bounds.history:
        print(
            f"   epoch {h['epoch']}: certified accuracy {h['certified_accuracy']:.3f} "
            f"(nominal model {h['nominal_accuracy']:.3f}), mean parameter-bound width {h['mean_width']:.3g}"
        )
    # replay: ordinary torch training on concrete datasets in the set stays inside the box
    g = torch.Generator().manual_seed(1)
    inside = True
    for _ in range(5):
        xs = d.x_train + (torch.rand(d.x_train.shape, generator=g, dtype=torch.float64) * 2 - 1) * eps
        p = {n: t.detach().clone().requires_grad_(True) for n, t in model.named_parameters()}
        opt = torch.optim.SGD(list(p.values()), lr=cfg.lr)
        for epoch in range(cfg.epochs):
            for idx in T.batch_indices(len(xs), cfg, epoch):
                opt.zero_grad()
                T.plain_loss(functional_call(model, p, (xs[idx],)), d.y_train[idx], "bce").backward()
                opt.step()
        inside &= bounds.contains({n: t.detach() for n, t in p.items()}, atol=1e-9)
    print(f"   5 ordinary torch runs on perturbed datasets end inside the certified box: {inside}")
    out = Path(out_dir)
    plot_history(bounds.history, out / "demo_training.png", f"Two-Moons, eps={eps}")
    first = T.certified_training(
        model, T.linf(d.x_train, d.y_train, eps), T.TrainConfig(**{**cfg.__dict__, "epochs": 1})
    )
    plot_regions(
        model,
        first,
        d.x_test,
        d.y_test,
        out / "demo_regions.png",
        title="certified regions after 1 epoch (grey: abstain)",
    )
    print(f"   plots: {out / 'demo_training.png'}, {out / 'demo_regions.png'}")
    return inside
