"""Every domain on CUDA tensors: the bounds equal the CPU bounds (to rounding) and contain
sampled concrete outputs, and an interval training step runs on the device; with timings of
both.  Without a GPU it says so and exits 0 (CI is CPU-only).

    python benchmarks/device_check.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import boundflow as bf

METHODS = ("ibp", "crown", "alpha-crown", "forward", "lp")


def _nets():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    return [("mlp", mlp, torch.rand(8, 16)), ("cnn", cnn, torch.rand(4, 1, 8, 8))]


def _time(f, repeats=5):
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA device here")
        return 0
    dev = torch.device(args.device)
    failures = 0
    for name, net, x in _nets():
        net = net.double().eval()
        x = x.double()
        eps = 0.05
        for m in METHODS:
            if m == "forward" and name == "cnn":
                continue
            cpu = bf.compute_bounds(net, x - eps, x + eps, method=m)
            net_d = net.to(dev)
            on = bf.compute_bounds(net_d, (x - eps).to(dev), (x + eps).to(dev), method=m)
            assert on[0].device.type == dev.type, (name, m, on[0].device)
            diff = max((on[0].cpu() - cpu[0]).abs().max().item(), (on[1].cpu() - cpu[1]).abs().max().item())
            with torch.no_grad():
                pts = (x.to(dev) + eps * (2 * torch.rand(256, *x.shape, device=dev, dtype=x.dtype) - 1)).clamp(
                    (x - eps).to(dev), (x + eps).to(dev)
                )
                ys = net_d(pts.reshape(-1, *x.shape[1:])).reshape(256, *cpu[0].shape)
            tol = 1e-9
            inside = bool(((ys >= on[0] - tol) & (ys <= on[1] + tol)).all())
            ms_cpu = _time(lambda: bf.compute_bounds(net.cpu(), x - eps, x + eps, method=m), 3)
            ms_dev = _time(lambda: bf.compute_bounds(net_d, (x - eps).to(dev), (x + eps).to(dev), method=m), 3)
            ok = inside and diff <= 1e-6 * (1 + cpu[1].abs().max().item())
            failures += not ok
            verdict = "ok" if ok else "FAIL"
            print(f"{name:<4} {m:<12} max |device - cpu| {diff:.2e}  contains samples {inside}  "
                  f"cpu {ms_cpu:8.2f} ms  {dev.type} {ms_dev:8.2f} ms  {verdict}", flush=True)  # fmt: skip
            net.cpu()
    # an interval training step on the device: forward, backward, interval gradients
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(dev)
    params = bf.interval_parameters(net, radius=1e-3)
    xi = bf.IntervalTensor.from_eps(torch.rand(64, 16, device=dev), 0.01)
    y = torch.randint(0, 4, (64,), device=dev)
    from torch.func import functional_call

    loss = F.cross_entropy(functional_call(net, params, (xi,)), y)
    loss.backward()
    grads_on_device = all(p.grad is not None and p.grad.lower.device.type == dev.type for p in params.values())
    failures += not grads_on_device
    print(f"interval training step on {dev.type}: interval gradients on the device {grads_on_device}")
    print("all ok" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
