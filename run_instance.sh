#!/usr/bin/env bash
# VNN-COMP interface: verify one instance and write the result file. Always exits 0.
# Usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
set -uo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected version string v1, got '${1:-}'" >&2; exit 1; fi
if [ "$#" -ne 6 ]; then echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2; exit 0; fi
category="$2"; onnx="$3"; vnnlib="$4"; results="$5"; timeout="$6"
here="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$here/.venv/bin/verify" ]; then verify=("$here/.venv/bin/verify")
elif command -v verify >/dev/null; then verify=(verify)
else verify=(python3 -m verifier); fi  # installed by install_tool.sh, or by pip install
rm -f "$results"
# prepare_instance.sh of the next instance stops this run if it is still alive (and nothing else)
pidfile="${TMPDIR:-/tmp}/verifier-run-instance-$(id -u).pid"
"${verify[@]}" "$onnx" "$vnnlib" --family "$category" --timeout "$timeout" --results "$results" &
echo $! > "$pidfile"
wait $!
rm -f "$pidfile"
if [ ! -s "$results" ]; then echo "error" > "$results"; fi
exit 0
