"""CROWN's memory and work budgets: the final back-substitution in chunks of output rows (the
identity built chunk by chunk) gives the same bounds as one pass, and an intermediate node over
the work cap keeps its interval bounds — still sound, never tighter than CROWN (random
architectures and boxes; no data needed)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from boundflow.domains.linear.crown import crown, prepare
from boundflow.graph import capture

crown_mod = importlib.import_module("boundflow.domains.linear.crown")


def _net(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    c = int(torch.randint(2, 5, (1,), generator=g))
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(c * 9, 12), nn.ReLU(), nn.Linear(12, 7),
    ).double().eval()  # fmt: skip


def _box(seed: int):
    g = torch.Generator().manual_seed(seed + 100)
    centre = torch.randn(2, 2, 7, 7, generator=g, dtype=torch.float64)
    eps = 0.05 + 0.2 * torch.rand(1, generator=g, dtype=torch.float64)
    return centre - eps, centre + eps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_c", [False, True])
def test_output_rows_in_chunks_equal_one_pass(seed, with_c, monkeypatch):
    model = _net(seed)
    lo, hi = _box(seed)
    g = capture(model, (lo + hi) / 2)
    C = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) if with_c else None
    lb1, ub1, _ = crown(g, lo, hi, C)
    monkeypatch.setattr(crown_mod, "OUTPUT_CHUNK_ENTRIES", 1)  # one row per chunk
    lb2, ub2, _ = crown(g, lo, hi, C)
    torch.testing.assert_close(lb2, lb1, rtol=0, atol=1e-12)
    torch.testing.assert_close(ub2, ub1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_an_intermediate_node_over_the_work_cap_keeps_its_interval_bounds(seed):
    model = _net(seed)
    lo, hi = _box(seed)
    g = capture(model, (lo + hi) / 2)
    full = prepare(g, lo, hi, sparse=False)
    capped = prepare(g, lo, hi, sparse=False, work_max=1)  # every intermediate node over the cap
    assert getattr(full, "skipped", 0) == 0 and capped.skipped > 0
    lb_f, ub_f, _ = crown(g, lo, hi, state=full)
    lb_t, ub_t, _ = crown(g, lo, hi, state=capped)
    # never tighter than the full CROWN run, looser somewhere, and containing sampled outputs
    assert bool((lb_t <= lb_f + 1e-9).all() and (ub_t >= ub_f - 1e-9).all())
    assert bool((lb_t < lb_f - 1e-9).any() or (ub_t > ub_f + 1e-9).any())
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(512, *lo.shape, dtype=torch.float64, generator=gen)
    x = torch.cat([x, lo[None], hi[None]])
    with torch.no_grad():
        y = torch.stack([model(xi) for xi in x])
    assert bool((y >= lb_t - 1e-9).all() and (y <= ub_t + 1e-9).all())
