"""Interval (FullCert) vs solver-based (MIBP-Cert) certified training in MIBP-Cert's setting: a
thin wrapper around ``boundflow bench training`` (``boundflow/bench/training.py``) that writes
``docs/benchmarks/mibp_moons.{json,md,png}`` (or ``--name``'s files).

    python benchmarks/mibp_moons.py --methods ibp,lp,milp --eps 1e-4,1e-3,1e-2 --solver-eps 1e-2
    python benchmarks/mibp_moons.py --dataset iris-2 --eps 0.3 --name mibp_iris
    python benchmarks/mibp_moons.py --dataset breast-cancer --eps 0.01 --name mibp_breast_cancer

Two-Moons: 100 training, 200 validation and 200 test points (noise 0.1), 10 seeds; the box
kept at the best validation certified accuracy; see ``boundflow bench training --help``.
"""

from __future__ import annotations

import sys

from boundflow.cli import main

if __name__ == "__main__":
    argv = ["bench", "training", "--name", "mibp_moons", "--cmd", "python benchmarks/mibp_moons.py"]
    if "--out" not in sys.argv:
        argv += ["--out", "docs/benchmarks"]
    raise SystemExit(main(argv + sys.argv[1:]))
