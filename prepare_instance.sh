#!/usr/bin/env bash
# VNN-COMP interface: called before every instance. Settings may depend on CATEGORY only.
# Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
set -uo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected version string v1, got '${1:-}'" >&2; exit 1; fi
if [ "$#" -ne 4 ]; then echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1; fi
onnx="$3"; vnnlib="$4"
# a stale run of an earlier instance would compete for the cores: stop it (only the run that
# run_instance.sh recorded, never other verifier processes such as a batch run)
pidfile="${TMPDIR:-/tmp}/verifier-run-instance-$(id -u).pid"
if [ -f "$pidfile" ]; then
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && grep -qa "verif" "/proc/$pid/cmdline" 2>/dev/null; then
    pkill -9 -P "$pid" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
fi
for f in "$onnx" "$vnnlib"; do
  if [ ! -r "$f" ]; then echo "cannot read $f" >&2; exit 1; fi
done
exit 0
