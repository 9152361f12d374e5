#!/usr/bin/env bash
# VNN-COMP interface: install the verifier once per machine, into .venv beside this script.
# Usage: install_tool.sh v1
set -euo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected version string v1, got '${1:-}'" >&2; exit 1; fi
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
# torch is pinned in the same pip command so that no CUDA build is pulled in on CPU machines;
# on a machine with its own torch build, drop the pin.
"$here/.venv/bin/pip" install --quiet "torch==${VERIFIER_TORCH_VERSION:-2.13.0}" -e "$here"
"$here/.venv/bin/verify" --version
