#!/usr/bin/env bash
# VNN-COMP interface: called before every instance. Settings may depend on CATEGORY only.
# Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
set -uo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected version string v1, got '${1:-}'" >&2; exit 1; fi
if [ "$#" -ne 4 ]; then echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1; fi
onnx="$3"; vnnlib="$4"
# stale verifier processes from an earlier instance would compete for the cores
pkill -9 -f "verifier.cli" 2>/dev/null || true
pkill -9 -f "/bin/verify " 2>/dev/null || true
for f in "$onnx" "$vnnlib"; do
  if [ ! -r "$f" ]; then echo "cannot read $f" >&2; exit 1; fi
done
exit 0
