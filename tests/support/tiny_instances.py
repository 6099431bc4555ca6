"""The tiny VNN-COMP-style folder kept in the repository (``tests/data/tiny_vnncomp``): two
networks (a Gemm/ReLU MLP and a residual CNN) with one ``unsat`` and one ``sat`` property each,
their answers set by exact MILP minima at a margin, so the verifier's own tests run without
``../shared``.  ``python -m tests.support.tiny_instances FOLDER`` writes them again."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import boundflow as bf
from boundflow.onnx import load_onnx
from boundflow.verify import pipeline
from tests.support.onnx_files import mlp_onnx, residual_cnn_onnx, vnnlib_file

FOLDER = Path(__file__).resolve().parents[1] / "data" / "tiny_vnncomp"
MARGIN = 0.05  # how far each threshold lies from the exact minimum
BODY = "(assert (>= Y_1 (+ Y_0 {a!r})))"  # reachable iff min(Y_0 - Y_1) <= -a


def exact_min(onnx: Path, lo, hi) -> float:
    """The exact minimum of ``Y_0 - Y_1`` over the box (MILP, proven optimal)."""
    f = pipeline._batched(load_onnx(onnx).double().eval())
    n_out = f(torch.as_tensor(lo, dtype=torch.float64)[None]).shape[1]
    C = torch.zeros(1, n_out, dtype=torch.float64)
    C[0, 0], C[0, 1] = 1.0, -1.0
    lo_t = torch.as_tensor(lo, dtype=torch.float64)[None]
    hi_t = torch.as_tensor(hi, dtype=torch.float64)[None]
    res = bf.prepare(f, "milp").bounds(bf.Box(lo_t, hi_t), bf.OutputSpec(C))
    assert res.exact is not None and bool(res.exact.all()), "the MILP was not solved to optimality"
    return float(res.lower[0, 0])


def boxes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The input box of each network."""
    g = np.random.default_rng(3)
    mlp_c = g.uniform(-0.5, 0.5, 4)
    cnn_c = g.uniform(0.0, 1.0, 81)
    return {"mlp.onnx": (mlp_c - 0.2, mlp_c + 0.2), "cnn.onnx": (cnn_c - 0.02, cnn_c + 0.02)}


def write(folder: Path = FOLDER) -> list[tuple[str, str, str]]:
    """Write the networks, properties and ``instances.csv``; returns its rows."""
    folder.mkdir(parents=True, exist_ok=True)
    mlp_onnx(folder, [4, 12, 12, 3], 7, "mlp.onnx")
    cnn = residual_cnn_onnx(folder, 5)
    cnn.rename(folder / "cnn.onnx")
    rows = []
    for name, (lo, hi) in boxes().items():
        m = exact_min(folder / name, lo, hi)
        for expected, a in (("unsat", -(m - MARGIN)), ("sat", -(m + MARGIN))):
            prop = f"{name.removesuffix('.onnx')}_{expected}.vnnlib"
            n_out = 3
            vnnlib_file(folder, lo.tolist(), hi.tolist(), BODY.format(a=a), n_out, prop)
            rows.append((name, prop, expected))
    lines = ["onnx,vnnlib,timeout,expected"] + [f"{o},{v},30,{e}" for o, v, e in rows]
    (folder / "instances.csv").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER)
