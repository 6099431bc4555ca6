#!/usr/bin/env bash
# VNN-COMP tool interface: install BoundFlow (a virtual environment in the repository's .venv).
#   install_tool.sh v1
set -euo pipefail
if [ "${1:-}" != "v1" ]; then echo "install_tool.sh: expected version string v1, got '${1:-}'" >&2; exit 1; fi
cd "$(dirname "$0")/.."
make .venv/.installed
