"""Ground truth for properties whose input boxes hold few float32 points: every float32 input of
every disjunct's box through onnxruntime.

    python benchmarks/exhaustive_float32.py ONNX VNNLIB [--max-points 5000000]

For each disjunct, the float32 numbers in ``[lower, upper]`` of each varying input are listed
(a fixed input takes the float32 nearest its value), and their product — at most
``--max-points`` per disjunct — is evaluated in onnxruntime, the network's own precision.  The
margin of a point is ``max over rows (C y - d)``: the point is unsafe (a counterexample) iff it
is ``<= 0`` (``< 0`` on strict rows).  Prints the smallest margin per disjunct and either the
first counterexample or that no float32 point of any box is unsafe — what a ``sat`` label or an
``unsat`` answer can be checked against when the consensus and a proof disagree.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def float32_points(lo: float, hi: float) -> np.ndarray:
    """Every float32 number in ``[lo, hi]`` (the nearest one if none lies inside)."""
    a = np.float32(lo)
    if float(a) < lo:
        a = np.nextafter(a, np.float32(np.inf))
    b = np.float32(hi)
    if float(b) > hi:
        b = np.nextafter(b, np.float32(-np.inf))
    if a > b:
        return np.array([np.float32(lo)], dtype=np.float32)
    ia, ib = np.array([a, b], dtype=np.float32).view(np.int32).astype(np.int64)
    if a >= 0:
        return np.arange(ia, ib + 1).astype(np.int32).view(np.float32)
    if b <= 0:  # negative floats: the integer view runs backwards
        return np.arange(ib, ia + 1).astype(np.int32).view(np.float32)[::-1]
    neg, pos = float32_points(lo, -0.0), float32_points(0.0, hi)
    return np.concatenate([neg[neg != 0], np.zeros(1, np.float32), pos[pos != 0]])  # one zero


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx")
    ap.add_argument("vnnlib")
    ap.add_argument("--max-points", type=int, default=5_000_000, help="per disjunct")
    args = ap.parse_args()

    import onnxruntime as ort

    from boundflow.onnx import parse_vnnlib

    path = Path(args.onnx)
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch_dynamic = not isinstance(inp.shape[0], int)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    n_out = int(sess.run(None, {inp.name: np.zeros(shape, np.float32)})[0].size)
    disjuncts = parse_vnnlib(args.vnnlib, n_outputs=n_out)
    smallest = np.inf
    for k, dj in enumerate(disjuncts):
        lo, hi = dj.lower.numpy(), dj.upper.numpy()
        axes = [float32_points(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]
        total = int(np.prod([len(a) for a in axes], dtype=np.float64))
        if total > args.max_points:
            print(f"disjunct {k}: {total:.3g} float32 points > --max-points; not enumerated")
            return 2
        C, d = dj.C.numpy(), dj.d.numpy()
        strict = dj.strict.numpy()
        worst = np.inf
        combos = itertools.product(*axes)
        while True:
            chunk = np.array(list(itertools.islice(combos, 65536)), dtype=np.float32)
            if not len(chunk):
                break
            if batch_dynamic:
                y = sess.run(None, {inp.name: chunk.reshape(len(chunk), *shape[1:])})[0].reshape(len(chunk), -1)
            else:
                y = np.stack([sess.run(None, {inp.name: x.reshape(shape)})[0].reshape(-1) for x in chunk])
            m = y.astype(np.float64) @ C.T - d  # (points, rows)
            unsafe = np.all(np.where(strict, m < 0, m <= 0), axis=1)
            if unsafe.any():
                i = int(np.nonzero(unsafe)[0][0])
                print(f"disjunct {k}: counterexample x = {chunk[i].tolist()}, y = {y[i].tolist()}")
                return 1
            worst = min(worst, float(m.max(axis=1).min()))
        smallest = min(smallest, worst)
        print(f"disjunct {k}: {total} float32 points, smallest margin {worst:.6g}")
    print(f"no float32 point of any box is unsafe; smallest margin {smallest:.6g} over {len(disjuncts)} disjuncts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
