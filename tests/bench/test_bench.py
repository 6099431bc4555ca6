"""The tightness benchmark: its numbers are consistent (exact MILP >= LP >= CROWN >= IBP and
alpha-CROWN >= CROWN for lower bounds, every bound below the best attack value), the consistency
check can fail, and the CLI runs end to end (quick mode) for built-in, ONNX and factory networks."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from boundflow.bench import Case, check_consistency, run
from boundflow.bench.networks import ibp_bounds, mlp
from boundflow.bench.tightness import attack
from boundflow.demo import shared_vnncomp

D = torch.float64
SHARED = shared_vnncomp()  # ../shared next to the checkout, or $BOUNDFLOW_SHARED; None without it


def tiny_case() -> Case:
    """A random ReLU MLP 6-10-10-4 at 3 points (used by the factory test too)."""
    model = mlp([6, 10, 10, 4], seed=1).eval()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(2), dtype=D)
    with torch.no_grad():
        y = model(x).argmax(1)
    return Case("tiny relu", model, x, y)


def tiny_factory():
    c = tiny_case()
    return c.model, c.points


@pytest.fixture(scope="module")
def result():
    cases = [tiny_case()]
    torch.manual_seed(3)
    sig = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(D).eval()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(4), dtype=D)
    cases.append(Case("tiny sigmoid-tanh", sig, x, torch.tensor([0, 1, 2])))
    from boundflow.bench.tightness import METHODS

    # sdp: its own test below (a solve per bounded quantity; one point is enough)
    return run(cases, [0.02, 0.1], [m for m in METHODS if m != "sdp"], time_limit=10, progress=False)


def test_orderings_hold_and_milp_is_exact_on_relu(result):
    assert check_consistency(result) == []
    for r in result.bounds:
        lower = {m: torch.tensor(v) for m, v in r["lower"].items()}
        att = torch.tensor(r["attack"])
        tol = 1e-6 * (1 + att.abs())
        for m in lower:
            assert (lower[m] <= att + tol).all(), m
        assert (lower["lp"] >= lower["crown"] - 1e-9).all()
        assert (lower["milp"] >= lower["lp"] - 1e-9).all()
        assert (lower["alpha-crown"] >= lower["crown"] - 1e-9).all()
        assert (lower["crown-tight"] >= lower["crown"] - 1e-9).all()
        assert (lower["crown"] >= lower["ibp"] - 1e-9).all()
        if r["network"] == "tiny relu":
            # the MILP is the network exactly and finishes: its bound is the optimum, which the
            # attack approaches from above
            assert all(all(row) for row in r["exact"])
            # the attack (the reference where no exact optimum exists) finds the optimum mostly
            found = (att - lower["milp"] <= 1e-3 * (1 + att.abs())).double().mean()
            assert found >= 0.8, float(found)
        else:
            assert not any(any(row) for row in r["exact"])  # relaxed activations: never called exact


def test_rows_report_gaps_widths_and_certified_fractions(result):
    rows = [r for r in result.rows if r["network"] == "tiny relu" and r["eps"] == 0.1]
    by = {r["method"]: r for r in rows}
    assert set(by) == {"ibp", "crown", "crown-tight", "alpha-crown", "lp", "milp"}
    assert by["milp"]["mean_gap"] == pytest.approx(0, abs=1e-9)
    assert by["ibp"]["mean_gap"] > by["crown"]["mean_gap"] >= by["lp"]["mean_gap"] - 1e-12
    assert by["ibp"]["mean_width"] > by["crown"]["mean_width"] >= by["milp"]["mean_width"] - 1e-12
    assert by["milp"]["certified"] >= by["lp"]["certified"] >= by["crown"]["certified"] >= by["ibp"]["certified"]
    assert all(r["seconds"] >= 0 and r["reference_exact_fraction"] == 1.0 for r in rows)
    assert result.environment["torch"] == torch.__version__


def test_consistency_check_catches_an_unsound_or_loose_method(result):
    import copy

    bad = copy.deepcopy(result)
    r = bad.bounds[0]
    r["lower"]["crown"] = [[v + 10 for v in row] for row in r["lower"]["crown"]]  # above the attack
    r["lower"]["milp"] = [[v - 10 for v in row] for row in r["lower"]["milp"]]  # looser than lp
    msgs = check_consistency(bad)
    assert any("crown lower bound above the attack" in m for m in msgs)
    assert any("milp looser than lp" in m for m in msgs)


def test_sdp_row_sits_between_lp_and_the_exact_milp_and_is_skipped_where_too_large():
    c = tiny_case()
    c.points, c.labels = c.points[:1], c.labels[:1]
    big = Case("wide", mlp([120, 8, 3], seed=0).eval(), torch.rand(1, 120, dtype=D), torch.tensor([0]))
    res = run([c, big], [0.1], ("lp", "sdp", "milp"), time_limit=10, progress=False)
    assert check_consistency(res) == []
    r = next(b for b in res.bounds if b["network"] == "tiny relu")
    lp, sdp, milp = (torch.tensor(r["lower"][m]) for m in ("lp", "sdp", "milp"))
    assert (sdp >= lp - 1e-9).all() and (sdp <= milp + 1e-4 * (1 + milp.abs())).all()
    assert (sdp > lp + 1e-6).any()  # strictly tighter somewhere on this network
    skipped = [row for row in res.rows if row["network"] == "wide" and row["method"] == "sdp"]
    assert len(skipped) == 1 and "lifts" in skipped[0]["skipped"]
    import copy

    bad = copy.deepcopy(res)
    rb = next(b for b in bad.bounds if b["network"] == "tiny relu")
    rb["lower"]["sdp"] = [[v + 1 for v in row] for row in rb["lower"]["milp"]]
    assert any("sdp above the exact MILP optimum" in m for m in check_consistency(bad))
    rb["lower"]["sdp"] = [[v - 1 for v in row] for row in rb["lower"]["lp"]]
    assert any("sdp looser than lp" in m for m in check_consistency(bad))


def test_attack_values_are_reached_by_points_in_the_box():
    c = tiny_case()
    lo, hi = c.points - 0.1, c.points + 0.1
    C = torch.eye(4, dtype=D).unsqueeze(0).expand(3, -1, -1)
    att = attack(c.model, lo, hi, C)
    with torch.no_grad():
        centre = c.model((lo + hi) / 2)
    assert (att <= centre + 1e-12).all()  # never worse than the centre, which it tries


def test_ibp_bounds_for_training_contain_samples():
    model = mlp([5, 7, 3], nn.Tanh, seed=0)
    x = torch.rand(4, 5, dtype=D)
    lo, hi = ibp_bounds(model, x - 0.1, x + 0.1)
    for _ in range(50):
        with torch.no_grad():
            y = model(x + (torch.rand_like(x) * 2 - 1) * 0.1)
        assert (y >= lo - 1e-12).all() and (y <= hi + 1e-12).all()
    with pytest.raises(TypeError, match="no rule for Softmax"):
        ibp_bounds(nn.Sequential(nn.Softmax(1)), x, x)


@pytest.mark.slow  # about 50 s on 2 cores; `make test-slow` runs it
def test_cli_quick_runs_end_to_end(tmp_path):
    from boundflow.cli import main

    out = tmp_path / "t"
    assert main(["bench", "tightness", "--quick", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "tightness.json").read_text())
    assert res["consistency_violations"] == []
    assert {r["method"] for r in res["rows"]} == {"ibp", "crown", "alpha-crown", "lp", "milp"}
    assert len({r["network"] for r in res["rows"]}) == 3
    assert (out / "tightness.png").stat().st_size > 10_000
    assert "| milp |" in (out / "tightness.md").read_text()


@pytest.mark.shared
@pytest.mark.skipif(SHARED is None, reason="shared VNN-COMP networks not available (../shared)")
def test_cli_onnx_and_factory_networks(tmp_path):
    from boundflow.cli import main

    out = tmp_path / "o"
    onnx = SHARED / "rl_benchmarks" / "onnx" / "cartpole.onnx"
    argv = [
        "bench",
        "tightness",
        "--no-builtin",
        "--onnx",
        str(onnx),
        "--factory",
        "tests.bench.test_bench:tiny_factory",
    ]
    argv += [
        "--n-inputs",
        "2",
        "--eps",
        "0.05",
        "--methods",
        "ibp,crown,crown-tight,milp",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    res = json.loads((out / "tightness.json").read_text())
    assert {r["network"] for r in res["rows"]} == {"cartpole", "tiny_factory"}
    assert res["consistency_violations"] == []


def test_cli_rejects_bad_options(tmp_path, capsys):
    from tests.support.cli_contract import assert_user_error

    assert_user_error(
        capsys,
        ["bench", "tightness", "--quick", "--methods", "ibp,deeppoly", "--out", str(tmp_path)],
        "unknown 'deeppoly'",
    )
    assert_user_error(capsys, ["bench", "tightness", "--quick", "--eps", "a,b", "--out", str(tmp_path)], "--eps 'a,b'")
    argv = ["bench", "tightness", "--no-builtin", "--onnx", str(tmp_path / "x.onnx"), "--out", str(tmp_path)]
    assert_user_error(capsys, argv, "no ONNX file")


@pytest.mark.slow  # about 50 s on 2 cores; `make test-slow` runs it
def test_training_tightness_cli(tmp_path):
    from boundflow.cli import main

    argv = ["bench", "training", "--methods", "interval,lp", "--epochs", "2", "--n-train", "40", "--n-val", "40"]
    argv += ["--n-test", "40", "--seeds", "1", "--eps", "1e-2", "--batch-size", "40", "--group", "8"]
    argv += ["--workers", "1", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "training.json").read_text())
    runs = {r["method"]: r for r in res["runs"]}
    # the solver step is intersected with the interval step: never wider, epoch by epoch
    for a, b in zip(runs["lp"]["width_per_epoch"], runs["ibp"]["width_per_epoch"]):
        assert a <= b + 1e-12
    for r in res["runs"]:
        k = r["kept_epoch"]
        assert k >= 1 and k <= len(r["width_per_epoch"]) <= 2
        assert r["kept_certified_accuracy"] == r["certified_accuracy_per_epoch"][k - 1]
        # the kept epoch is the best by validation (the earliest on ties)
        val = r["val_certified_accuracy_per_epoch"]
        assert val[k - 1] == max(val) and max(val[: k - 1], default=-1) < val[k - 1]
    assert len(runs["lp"]["shrinking_params_per_step"]) == len(runs["lp"]["width_per_epoch"])
    assert (tmp_path / "training.png").exists() and "| lp | 0.01 | 1 |" in (tmp_path / "training.md").read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--group", "0"], "--group must be >= 1"),
        (["--dataset", "mnist"], "--dataset 'mnist'"),
        (["--methods", "interval,exact"], "unknown 'exact'"),
        (["--eps", "0.1,x"], "expected comma-separated numbers"),
        (["--patience", "0"], "--patience must be >= 1"),
    ],
)
def test_training_tightness_cli_rejects_bad_arguments_before_work(tmp_path, capsys, extra, message):
    from tests.support.cli_contract import assert_user_error

    assert_user_error(capsys, ["bench", "training", "--out", str(tmp_path / "out"), *extra], re.escape(message))
    assert not (tmp_path / "out").exists()


def test_a_method_that_cannot_encode_the_network_is_reported_not_fatal(monkeypatch):
    import boundflow.bench.tightness as bt
    from boundflow.bench.tightness import markdown, summary
    from boundflow.errors import UnsupportedOperation

    real = bt._bound

    def no_milp(method, *a):
        if method == "milp":
            raise UnsupportedOperation("solver encoding: node x calls aten.foo, which has no encoding")
        return real(method, *a)

    monkeypatch.setattr(bt, "_bound", no_milp)
    res = run([tiny_case()], [0.05], methods=["ibp", "crown", "milp"], progress=False)
    skipped = [r for r in res.rows if "skipped" in r]
    assert [r["method"] for r in skipped] == ["milp"] and "aten.foo" in skipped[0]["skipped"]
    assert {r["method"] for r in summary(res)} == {"ibp", "crown"}
    assert "skipped: solver encoding" in markdown(res, "test")
    assert check_consistency(res) == []


def test_tradeoffs_pick_the_most_gap_closed_per_second():
    from boundflow.bench import tightness as T

    def row(net, m, eps, gap, ms):
        return {"network": net, "method": m, "eps": eps, "mean_gap": gap, "ms_per_point": ms, "worst_gap": gap,
                "mean_width": gap, "certified": 0.0, "reference_exact_fraction": 1.0}  # fmt: skip

    rows = [row("a", "ibp", e, 1.0, 1.0) for e in (0.1, 0.2)]
    rows += [row("a", "crown", 0.1, 0.5, 10.0), row("a", "crown", 0.2, 0.3, 10.0)]  # closes 60% in 10 ms
    rows += [row("a", "milp", 0.1, 0.0, 1000.0), row("a", "milp", 0.2, 0.0, 1000.0)]  # closes all in 1 s
    rows += [row("b", "ibp", 0.1, 1.0, 1.0), row("b", "crown", 0.1, 1.0, 5.0), {"network": "b", "method": "lp",
             "eps": 0.1, "skipped": "no solver"}]  # fmt: skip
    t = {(r["network"], r["method"]): r for r in T.tradeoffs(T.TightnessResult(rows=rows))}
    assert set(t) == {("a", "crown"), ("a", "milp"), ("b", "crown")}
    assert abs(t["a", "crown"]["gap_closed"] - 0.6) < 1e-12 and abs(t["a", "crown"]["closed_per_second"] - 60) < 1e-9
    assert t["a", "milp"]["gap_closed"] == 1.0 and abs(t["a", "milp"]["closed_per_second"] - 1.0) < 1e-9
    assert t["a", "crown"]["best"] and not t["a", "milp"]["best"]
    assert not t["b", "crown"]["best"]  # closes nothing: no trade-off to recommend
    md = T.markdown(T.TightnessResult(rows=[r for r in rows if "skipped" not in r]), "cmd")
    assert "## Trade-off per network" in md and "| a | crown | 60.0% |" in md
