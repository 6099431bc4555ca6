"""Relaxation tightness across methods: a thin wrapper around ``boundflow bench tightness``
(``boundflow/bench/tightness.py``) that writes ``docs/benchmarks/tightness.{json,md,png}``.

    python benchmarks/tightness.py [--quick] [--points 16] [--onnx model.onnx] [--out docs/benchmarks]
"""

from __future__ import annotations

import sys

from boundflow.cli import main

if __name__ == "__main__":
    argv = ["bench", "tightness"]
    if "--out" not in sys.argv:
        argv += ["--out", "docs/benchmarks"]
    raise SystemExit(main(argv + sys.argv[1:]))
