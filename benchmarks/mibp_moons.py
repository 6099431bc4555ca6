"""Interval (FullCert) vs solver-based (MIBP-Cert) certified training on Two-Moons: a thin wrapper
around ``boundflow bench training`` (``boundflow/bench/training.py``) that writes
``docs/benchmarks/mibp_moons.{json,md,png}``.

    python benchmarks/mibp_moons.py [--seeds 10] [--epochs 6] [--methods interval,lp,milp,mibp]
                                    [--eps 1e-4,1e-3,1e-2] [--workers 2] [--out docs/benchmarks]
"""

from __future__ import annotations

import sys

from boundflow.cli import main

if __name__ == "__main__":
    argv = ["bench", "training", "--name", "mibp_moons", "--cmd", "python benchmarks/mibp_moons.py"]
    if "--out" not in sys.argv:
        argv += ["--out", "docs/benchmarks"]
    raise SystemExit(main(argv + sys.argv[1:]))
