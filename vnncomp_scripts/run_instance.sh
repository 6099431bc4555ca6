#!/usr/bin/env bash
# VNN-COMP tool interface: verify one instance and write the result file
# (sat with a witness, unsat, timeout, unknown or error).
#   run_instance.sh v1 CATEGORY ONNX VNNLIB RESULT TIMEOUT
set -uo pipefail
if [ "${1:-}" != "v1" ] || [ $# -ne 6 ]; then
    echo "run_instance.sh: usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULT TIMEOUT" >&2; exit 1
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
py="$here/.venv/bin/python"; [ -x "$py" ] || py=python3
rm -f "$5"
"$py" -m boundflow verify "$3" "$4" --timeout "$6" --out "$5" --no-progress
rc=$?
# exit codes 0/10/20 are answers (unsat/sat/undecided); anything else leaves no answer
if [ ! -s "$5" ]; then
    if [ "$rc" -eq 2 ]; then echo "error" > "$5"; else echo "unknown" > "$5"; fi
fi
exit 0
