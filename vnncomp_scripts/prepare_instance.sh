#!/usr/bin/env bash
# VNN-COMP tool interface: get ready for one instance (check that the network
# imports and the property parses; exit 0 when ready, non-zero with a one-line reason if not).
#   prepare_instance.sh v1 CATEGORY ONNX VNNLIB
set -uo pipefail
if [ "${1:-}" != "v1" ] || [ $# -ne 4 ]; then
    echo "prepare_instance.sh: usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
py="$here/.venv/bin/python"; [ -x "$py" ] || py=python3
exec "$py" -m boundflow.verify.prepare "$3" "$4"
