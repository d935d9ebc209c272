#!/usr/bin/env bash
# Generates the Python stubs (+ mypy .pyi) from protos/ into the folder given (default generated/).
# One script, used by `make protos` and by `make check-protos` (into a temp dir).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/generated}"
py="${PYTHON:-$root/.venv/bin/python}"
bindir="$(dirname "$py")"
rm -rf "$out/agentgate"
mkdir -p "$out"
"$py" -m grpc_tools.protoc \
  -I "$root/protos" \
  --plugin=protoc-gen-mypy="$bindir/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bindir/protoc-gen-mypy_grpc" \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "$root"/protos/agentgate/v1/*.proto
