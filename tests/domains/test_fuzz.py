"""The differential soundness fuzzer (``tests/support/fuzz.py``) in CI: a fixed set of seeds (random
architectures and op arguments) against every method, and proof that the fuzzer's checks fail
on a broken rule."""

from __future__ import annotations

import sys

import pytest
import torch

from boundflow.domains.linear import relaxations
from tests.support.fuzz import METHODS, campaign, draw

CI_SEEDS = range(100)
SDP_SEEDS = range(60)  # the SDP solves cost more: fewer seeds here (the slow long campaign runs sdp on its 600)
# every method must get to check a share of the cases (a fuzzer whose cases are all refused
# checks nothing); measured counts for these seeds are in the closing note of issue 13
MIN_CHECKED = {
    "ibp": 100,
    "crown": 60,
    "alpha-crown": 60,
    "forward": 35,
    "forward-tight": 35,
    "lp": 40,
    "milp": 40,
    "mibp": 8,
    "sdp": 20,  # of SDP_SEEDS: 24 of 60 (the rest refused: ops without an encoding, or over SDP_MAX_LIFTED)
}


@pytest.mark.parametrize("methods", [tuple(m for m in METHODS if m != "sdp"), ("sdp",)], ids=["methods", "sdp"])
def test_fuzzer_finds_no_miss_on_ci_seeds(capsys, methods):
    """Every method on the CI seeds (the SDP on its own, so the two halves run in parallel)."""
    tally, n = campaign(SDP_SEEDS if methods == ("sdp",) else CI_SEEDS, methods)
    with capsys.disabled():
        print(f"\nfuzz: {n} cases; checked {dict(tally.checked)}; refused {dict(tally.refused)}")
    assert not tally.failures, "\n".join(map(str, tally.failures))
    for m in methods:
        assert tally.checked[m] >= MIN_CHECKED[m], (m, tally.checked[m])


@pytest.mark.slow
def test_fuzzer_long_campaign():
    tally, n = campaign(range(1000, 1600))
    assert n == 600 and not tally.failures, "\n".join(map(str, tally.failures))


def test_draws_are_deterministic_and_varied():
    a, b = draw(7), draw(7)
    assert a.description == b.description and torch.equal(a.lo, b.lo)
    kinds = {d.split("(")[0] for s in range(60) for d in draw(s).description}
    for k in ("maxpool", "conv", "leaky", "add", "sub", "cat", "linear", "x/s", "elu", "bounded weights: ['"):
        assert any(x.startswith(k.split("(")[0]) for x in kinds), k


def test_fuzzer_catches_a_broken_relaxation(monkeypatch):
    """The old convex-only LeakyReLU relaxation (wrong for slopes > 1) must be caught."""

    def convex_only(l, u, slope, alpha=None):
        return relaxations.leaky_relu(l, u, min(slope, 1.0), alpha)

    table = dict(relaxations.RELAXATIONS)
    table[torch.ops.aten.leaky_relu.default] = lambda node, l, u, alpha=None: convex_only(
        l, u, float(node.args[1]) if len(node.args) > 1 else 0.01, alpha
    )
    monkeypatch.setattr(relaxations, "RELAXATIONS", table)
    for mod in ("boundflow.domains.linear.crown", "boundflow.domains.linear.forward", "boundflow.encode.network"):
        monkeypatch.setattr(sys.modules[mod], "RELAXATIONS", table)
    tally, _ = campaign(range(60), methods=("crown", "forward"))
    assert tally.failures, "the fuzzer did not notice a relaxation that is wrong for slopes > 1"
