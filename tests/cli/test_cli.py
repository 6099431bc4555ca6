"""The demo and the benchmark script run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from boundflow.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_its_bounds_hold(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    for f in ("demo_training.png", "demo_regions.png", "demo_tightness.png", "demo_pointcloud.png"):
        assert (tmp_path / f).stat().st_size > 5_000, f
    out = capsys.readouterr().out
    assert "certified" in out and "all inside" in out
    assert "WRONG" not in out and "orderings (milp >= lp >= crown >= ibp, all below the attack): hold" in out
    assert "keep the prediction: True" in out and "every check passed" in out
    from boundflow.demo import shared_vnncomp

    if shared_vnncomp() is not None:  # the verification section ran and answered
        assert "test_nano.vnnlib       unsat   unsat" in out


def test_overhead_benchmark_prints_ratios(tmp_path):
    out_json = tmp_path / "overhead.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "interval_overhead.py"),
            "--repeats",
            "2",
            "--batch",
            "32",
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "ratio" in proc.stdout
    data = json.loads(out_json.read_text())
    assert len(data["rows"]) == 2 and all(r["ratio"] > 0 for r in data["rows"])


def test_tightness_benchmark_wrapper_and_crown_speed_run(tmp_path):
    """``benchmarks/tightness.py`` passes its options to ``boundflow bench tightness`` (the quick
    run itself is tested in test_bench.py); ``benchmarks/crown_speed.py`` prints the ratio."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ["--no-builtin", "--factory", "tests.bench.test_bench:tiny_factory", "--n-inputs", "2", "--eps", "0.05"]
    argv += ["--methods", "ibp,crown", "--out", str(tmp_path), "--no-progress"]
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tightness.py"), *argv], cwd=ROOT, env=env,
                   capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    data = json.loads((tmp_path / "tightness.json").read_text())
    assert data["consistency_violations"] == [] and "--factory tests.bench.test_bench:tiny_factory" in data["command"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "crown_speed.py"), "--repeats", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "crown / ibp" in proc.stdout
    rows = json.loads((tmp_path / "crown_speed.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["ratio"] > 0 for r in rows)
