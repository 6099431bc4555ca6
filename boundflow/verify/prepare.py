"""``python -m boundflow.verify.prepare ONNX VNNLIB``: what the competition's
``prepare_instance.sh`` runs: the network imports (checked against onnxruntime) and the property
parses with the network's input and output sizes; exit 0 when ready, 1 with a one-line reason."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m boundflow.verify.prepare ONNX VNNLIB", file=sys.stderr)
        return 1
    import numpy as np

    from boundflow.errors import BoundFlowError
    from boundflow.onnx import load_onnx, parse_vnnlib
    from boundflow.verify.pipeline import _n_outputs

    try:
        module = load_onnx(argv[0], check=True, atol=1e-4).double()
        parse_vnnlib(argv[1], n_inputs=int(np.prod(module.input_shape)), n_outputs=_n_outputs(module))
    except (BoundFlowError, FileNotFoundError, ValueError) as e:
        print(f"prepare_instance: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
